//! The seam between beltbox and an inference engine. A backend runs one input tensor and
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
    /// Runs one inference. Safe to call from several threads.
    fn run(&self, input: &Tensor) -> Result<Vec<Tensor>, BackendError>;
    /// Short engine name for logs and reports: "tract", "litert".
    fn name(&self) -> &'static str;
    /// Engine version and build facts, for the load log and `bench` output.
    fn runtime_version(&self) -> String;
}
