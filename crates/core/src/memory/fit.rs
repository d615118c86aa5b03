//! OTA interplay: may model B be loaded while model A keeps serving?
//!
//! During a swap both models are resident: the live one serves while the candidate loads
//! and runs its qualification. The process's runtime overhead (binary, allocator, main
//! stack) is paid once, so two models need `runtime + A's heap + B's heap`.
//!
//! When that does not fit, the documented strategy (docs/memory.md) is **sequential**:
//! unload A; serve from the fallback model if *it* fits beside B, otherwise answer 503
//! (results are spooled by the caller) while B loads and qualifies; if B is refused,
//! reload A. A candidate that does not fit even alone is **refused** and A keeps serving.

use serde::Serialize;

use super::budget::Budget;
use super::plan::Plan;

/// What the OTA code should do with a candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Both fit: load B beside A, qualify, switch atomically.
    Alongside {
        needed_bytes: u64,
        headroom_bytes: u64,
    },
    /// B fits alone but not beside A: unload A first (fallback or 503 meanwhile).
    Sequential {
        together_bytes: u64,
        alone_bytes: u64,
        budget_bytes: u64,
    },
    /// B does not fit even alone: refuse it; A keeps serving.
    Refuse { alone_bytes: u64, budget_bytes: u64 },
}

/// Bytes for two models in one process (runtime overhead counted once: the larger of the
/// two, since thread count may differ).
pub fn together_bytes(a: &Plan, b: &Plan) -> u64 {
    a.runtime_bytes.max(b.runtime_bytes) + a.model_bytes() + b.model_bytes()
}

/// "Can I load `candidate` while `live` serves, within `budget`?" Pure.
pub fn can_load_alongside(live: &Plan, candidate: &Plan, budget: &Budget) -> Decision {
    let together = together_bytes(live, candidate);
    let alone = candidate.total_bytes();
    if together <= budget.bytes {
        Decision::Alongside {
            needed_bytes: together,
            headroom_bytes: budget.bytes - together,
        }
    } else if alone <= budget.bytes {
        Decision::Sequential {
            together_bytes: together,
            alone_bytes: alone,
            budget_bytes: budget.bytes,
        }
    } else {
        Decision::Refuse {
            alone_bytes: alone,
            budget_bytes: budget.bytes,
        }
    }
}

/// In the sequential case: may the fallback model serve while the candidate qualifies?
/// (Otherwise the service answers 503 for the duration.)
pub fn fallback_can_serve(fallback: &Plan, candidate: &Plan, budget: &Budget) -> bool {
    together_bytes(fallback, candidate) <= budget.bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::budget::{BudgetSource, MIB};
    use crate::memory::plan::PlanBasis;

    fn plan(heap_mib: u64) -> Plan {
        Plan {
            model: format!("m{heap_mib}"),
            version: "1.0.0".into(),
            basis: PlanBasis::OptimisedGraph,
            threads: 1,
            weights_bytes: heap_mib * MIB,
            activation_bytes: 0,
            activation_peak_at: None,
            graph_bytes: 0,
            scratch_bytes: 0,
            preprocess_bytes: 0,
            preprocess: None,
            input_tensor_bytes: 0,
            load_transient_bytes: 0,
            runtime_bytes: 10 * MIB,
        }
    }

    #[test]
    fn decisions_table() {
        let budget = |mib| Budget::from_mib(mib, BudgetSource::Board { board: "b".into() });
        // (name, live heap MiB, candidate heap MiB, budget MiB, expected kind)
        let cases = [
            ("both fit with room", 20, 30, 100, "alongside"),
            ("both fit exactly", 20, 30, 60, "alongside"),
            ("one byte short together", 20, 30, 59, "sequential"),
            ("candidate alone exactly fits", 50, 30, 40, "sequential"),
            ("candidate alone too big", 5, 95, 100, "refuse"),
        ];
        for (name, a, b, bud, want) in cases {
            let d = can_load_alongside(&plan(a), &plan(b), &budget(bud));
            let kind = match d {
                Decision::Alongside {
                    headroom_bytes,
                    needed_bytes,
                } => {
                    assert_eq!(headroom_bytes + needed_bytes, bud * MIB, "{name}");
                    "alongside"
                }
                Decision::Sequential { .. } => "sequential",
                Decision::Refuse { .. } => "refuse",
            };
            assert_eq!(kind, want, "{name}");
        }
    }

    #[test]
    fn runtime_counted_once_and_fallback_check() {
        let b = Budget::from_mib(60, BudgetSource::Flag { text: "60M".into() });
        assert_eq!(together_bytes(&plan(20), &plan(30)), 60 * MIB);
        assert!(fallback_can_serve(&plan(20), &plan(30), &b));
        assert!(!fallback_can_serve(&plan(21), &plan(30), &b));
    }
}
