//! The seam between beltbox and an inference engine. A backend runs the input tensors and
//! returns the output tensors; everything else (preprocessing, checks, timing) is ours.

use crate::tensor::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine could not load or prepare the model (corrupt file, unsupported op...).
    #[error("{0}")]
    Load(String),
    /// The model's graph disagrees with its manifest.
    #[error("{0}")]
    Mismatch(String),
    /// The engine failed while running.
    #[error("{0}")]
    Run(String),
}

pub trait Backend: Send + Sync {
    /// Runs one inference on one tensor per manifest input, in manifest order. Safe to
    /// call from several threads.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError>;
    /// Short engine name for logs and reports: "tract", "litert".
    fn name(&self) -> &'static str;
    /// Engine version and build facts, for the load log and `bench` output.
    fn runtime_version(&self) -> String;
    /// How many graph nodes compute in integers vs touch floats (engines that expose
    /// their graph; `None` otherwise).
    fn op_counts(&self) -> Option<OpCounts> {
        None
    }
    /// Time spent per op type over `runs` inferences of `inputs`, slowest first (`None`
    /// when the engine cannot attribute time to ops).
    fn profile(
        &self,
        _inputs: &[Tensor],
        _runs: usize,
    ) -> Result<Option<Vec<OpTime>>, BackendError> {
        Ok(None)
    }
}

/// Integer vs float nodes of a loaded graph (constants and inputs not counted).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OpCounts {
    /// Nodes whose inputs and outputs are all integer tensors.
    pub integer: usize,
    /// Nodes computing on float tensors (conversions excluded).
    pub float: usize,
    /// The float nodes by op name.
    pub float_ops: std::collections::BTreeMap<String, usize>,
    /// Quantise, dequantise and cast nodes: one tensor converted between float and integer.
    pub conversions: usize,
    /// The conversions by op name.
    pub conversion_ops: std::collections::BTreeMap<String, usize>,
}

/// One op type's share of inference time.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpTime {
    pub op: String,
    pub nodes: usize,
    pub ms_per_run: f64,
    /// Fraction of the summed op time.
    pub share: f64,
}
