//! RAM planning and accounting: what a model will cost before it is served, which budget
//! applies, whether a second model fits beside the live one, and what the process really
//! allocates.
//!
//! - [`plan`]: the plan (pure): liveness over the optimised schedule, components, totals.
//! - [`budget`]: size parsing and "the strictest budget wins" (pure).
//! - [`fit`]: can model B be loaded while A serves (pure; the OTA swap asks this).
//! - [`graph`]: the adapter that turns an optimised tract plan into plain facts.
//! - [`alloc`]: the counting global allocator (installed by the binary).
//! - [`admission`]: the service's run-time gate: reservations against the budget.
//!
//! Runtime enforcement: the service refuses a model whose plan does not fit, and admits
//! requests through [`admission::Gate`] with [`Plan::per_request_bytes`] each.

pub mod admission;
pub mod alloc;
pub mod budget;
pub mod fit;
pub mod graph;
pub mod plan;

pub use budget::{parse_size, strictest, Budget, BudgetSource};
pub use fit::{can_load_alongside, Decision};
pub use plan::{GraphFacts, Plan, PlanBasis, PlanInputs, PreprocessFacts, Step};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("size `{value}` {problem}")]
    Size { value: String, problem: String },
    #[error("cannot plan: {0}")]
    Symbolic(String),
    #[error("cannot plan: {0}")]
    Backend(String),
}

impl MemoryError {
    /// Whether the fault lies in what the caller handed us (exit code 2).
    pub fn is_input_error(&self) -> bool {
        matches!(self, MemoryError::Size { .. } | MemoryError::Symbolic(_))
    }
}
