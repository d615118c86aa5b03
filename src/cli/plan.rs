//! `beltbox plan`: the RAM plan of a package against the strictest applicable budget.
//!
//! Gathers facts (package, optimised graph, board profile) and hands them to the pure
//! planner in `beltbox_core::memory`; prints the breakdown; exit 3 when over budget (the
//! breakdown is still printed, on stdout, so a technician sees what does not fit).

use serde::Serialize;

use beltbox_core::board::{self, BoardError};
use beltbox_core::memory::budget::human;
use beltbox_core::memory::{self, Budget, BudgetSource, MemoryError, Plan};
use beltbox_core::model::{self, LoadOptions};

use super::{emit, resolve_model, to_json, CliError, ModelArgs};

#[derive(clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// RAM budget: plain bytes or with a unit (512MiB, 1.5GiB, 300M).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    budget: Option<String>,
    /// Board profile whose AI RAM share is a budget (name or a .toml file).
    #[arg(long, value_name = "NAME")]
    board: Option<String>,
    /// Camera frame the preprocessing buffers are planned for (default: the model's
    /// input size, i.e. frames arrive already at model resolution).
    #[arg(long, value_name = "WxH")]
    frame: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--budget: {0}")]
    Budget(MemoryError),
    #[error("--board: {0}")]
    Board(BoardError),
    #[error("--frame `{0}` is not WIDTHxHEIGHT with both between 1 and 65535 (e.g. 1280x720)")]
    Frame(String),
    #[error("RAM plan of {model} is {total} ({total_bytes} bytes), over the {budget} budget from {bound_by}")]
    OverBudget {
        model: String,
        total: String,
        total_bytes: u64,
        budget: String,
        bound_by: BudgetSource,
    },
}

impl PlanError {
    pub fn exit_code(&self) -> u8 {
        match self {
            PlanError::OverBudget { .. } => 3,
            _ => 2,
        }
    }
}

impl From<PlanError> for CliError {
    fn from(e: PlanError) -> CliError {
        CliError::Plan(e)
    }
}

/// `WxH` -> (width, height).
fn parse_frame(s: &str) -> Result<(u64, u64), PlanError> {
    let bad = || PlanError::Frame(s.to_string());
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let w: u64 = w.trim().parse().map_err(|_| bad())?;
    let h: u64 = h.trim().parse().map_err(|_| bad())?;
    if !(1..=65535).contains(&w) || !(1..=65535).contains(&h) {
        return Err(bad());
    }
    Ok((w, h))
}

#[derive(Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    plan: &'a Plan,
    per_request_bytes: u64,
    steady_heap_bytes: u64,
    peak_heap_bytes: u64,
    total_bytes: u64,
    budget: Option<&'a Budget>,
    /// Every budget that applied; `budget` is the strictest.
    budgets: &'a [Budget],
    fits: bool,
    headroom_bytes: Option<i64>,
    alloc_current_bytes: Option<u64>,
    alloc_peak_bytes: Option<u64>,
}

pub fn plan_cmd(args: &PlanArgs) -> Result<(), CliError> {
    // Refuse bad flags before the (slow) model build.
    let flag_budget = match &args.budget {
        Some(text) => Some(Budget::new(
            memory::parse_size(text).map_err(PlanError::Budget)?,
            BudgetSource::Flag { text: text.clone() },
        )),
        None => None,
    };
    let board = match &args.board {
        Some(name) => Some(board::profile(name).map_err(PlanError::Board)?),
        None => None,
    };
    let frame = args.frame.as_deref().map(parse_frame).transpose()?;

    let dir = resolve_model(&args.model.model)?;
    let opts = LoadOptions {
        threads: args.model.threads as usize,
        ..LoadOptions::default()
    };
    let (package, plan, facts) = model::plan(&dir, &opts, frame)?;
    let budgets = memory::budget::applicable(flag_budget, &[&package.manifest], board.as_ref());
    let bound = memory::strictest(&budgets).cloned();
    let total = plan.total_bytes();
    let fits = bound.as_ref().is_none_or(|b| total <= b.bytes);
    let snap = memory::alloc::snapshot();
    let report = Report {
        plan: &plan,
        per_request_bytes: plan.per_request_bytes(),
        steady_heap_bytes: plan.steady_heap_bytes(),
        peak_heap_bytes: plan.peak_heap_bytes(),
        total_bytes: total,
        budget: bound.as_ref(),
        budgets: &budgets,
        fits,
        headroom_bytes: bound.as_ref().map(|b| b.bytes as i64 - total as i64),
        alloc_current_bytes: snap.map(|(c, _)| c as u64),
        alloc_peak_bytes: snap.map(|(_, p)| p as u64),
    };
    if args.json {
        emit(&to_json(&report))?;
    } else {
        emit(&text(&report, facts.as_ref()))?;
    }
    match bound {
        Some(b) if !fits => Err(PlanError::OverBudget {
            model: plan.model.clone(),
            total: human(total),
            total_bytes: total,
            budget: human(b.bytes),
            bound_by: b.source,
        }
        .into()),
        _ => Ok(()),
    }
}

fn text(r: &Report, facts: Option<&memory::GraphFacts>) -> String {
    let p = r.plan;
    let basis = match p.basis {
        memory::PlanBasis::OptimisedGraph => "liveness over the optimised tract plan",
        memory::PlanBasis::FileSizeEstimate => "ESTIMATE from file size (TFLite arena not visible)",
    };
    let mut s = format!(
        "{} {}: RAM plan, {} thread(s), {basis}\n",
        p.model, p.version, p.threads
    );
    let mut row = |name: &str, bytes: u64, note: String| {
        s.push_str(&format!("  {name:<18} {:>11}  {note}\n", human(bytes)));
    };
    let (consts, steps) = facts
        .map(|g| (g.const_count, g.steps.len()))
        .unwrap_or((0, 0));
    row(
        "weights",
        p.weights_bytes,
        if facts.is_some() {
            format!("{consts} constants (tensors, packed matmul operands) after optimisation")
        } else {
            "model file size".into()
        },
    );
    row(
        "activations",
        p.activation_bytes,
        match &p.activation_peak_at {
            Some(at) => format!("peak over {steps} steps, at {at}"),
            None => "estimate: 2 x input tensor + file size / 4".into(),
        },
    );
    row(
        "graph",
        p.graph_bytes,
        "model structures: 64 KiB + 3.5 KiB per node (measured)".into(),
    );
    row(
        "kernel scratch",
        p.scratch_bytes,
        format!("{} thread(s) x 24 KiB matmul scratch (measured)", p.threads),
    );
    let pre = p
        .preprocess
        .map(|f| {
            format!(
                "frame {}x{}x{} -> tensor {}x{}x{} ({} B/elem)",
                f.frame_width,
                f.frame_height,
                f.frame_channels,
                f.tensor_width,
                f.tensor_height,
                f.tensor_channels,
                f.tensor_elem_bytes
            )
        })
        .unwrap_or_default();
    row("preprocessing", p.preprocess_bytes, pre);
    row(
        "per request",
        p.per_request_bytes(),
        format!(
            "max(preprocessing, input {} + activations)",
            human(p.input_tensor_bytes)
        ),
    );
    row(
        "load transient",
        p.load_transient_bytes,
        "parse + optimise, released after load".into(),
    );
    row(
        "runtime",
        p.runtime_bytes,
        "binary, allocator, stacks (measured for this build)".into(),
    );
    row(
        "peak heap",
        r.peak_heap_bytes,
        format!("max(load, serving = {})", human(r.steady_heap_bytes)),
    );
    row("total", r.total_bytes, "peak heap + runtime".into());
    match r.budget {
        Some(b) => {
            let others: Vec<String> = r
                .budgets
                .iter()
                .filter(|o| *o != b)
                .map(|o| format!("{} from {}", human(o.bytes), o.source))
                .collect();
            row(
                "budget",
                b.bytes,
                format!(
                    "bound by {}{}",
                    b.source,
                    if others.is_empty() {
                        String::new()
                    } else {
                        format!(" (also: {})", others.join(", "))
                    }
                ),
            );
            let verdict = if r.fits {
                format!(
                    "  fits: {} headroom",
                    human(b.bytes.saturating_sub(r.total_bytes))
                )
            } else {
                format!(
                    "  OVER BUDGET by {}",
                    human(r.total_bytes.saturating_sub(b.bytes))
                )
            };
            s.push_str(&verdict);
        }
        None => s.push_str("  no budget applies"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::parse_frame;

    #[test]
    fn frames() {
        assert_eq!(parse_frame("1280x720").ok(), Some((1280, 720)));
        assert_eq!(parse_frame("8X8").ok(), Some((8, 8)));
        for bad in ["", "1280", "0x5", "x5", "5x", "-1x2", "70000x1"] {
            assert!(parse_frame(bad).is_err(), "{bad}");
        }
    }
}
