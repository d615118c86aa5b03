//! Replacing one of tract-onnx's op builders while keeping it as the fallback.
//!
//! beltbox takes over an ONNX op (`QLinearConv`, `QuantizeLinear`) only where it can compute
//! it better, and leaves the rest to tract: its builder still parses the node, its
//! expansion still infers shapes and wires the cases ours does not cover. Registry entries
//! are plain `fn` pointers, so the builder being replaced is kept in a static.

use std::sync::OnceLock;

use tract_core::downcast_rs::Downcast;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// tract-onnx's builder signature (its own type alias is private).
pub type OpBuilder =
    fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// Registers `ours` for `op`, keeping the builder it replaces in `kept`. A second
/// registration finds `ours` there and keeps the first (tract's).
pub fn replace(
    onnx: &mut tract_onnx::Onnx,
    op: &'static str,
    ours: OpBuilder,
    kept: &OnceLock<OpBuilder>,
) {
    if let Some(&theirs) = onnx.op_register.0.get(op) {
        if theirs as usize != ours as usize {
            let _ = kept.set(theirs);
        }
        onnx.op_register.insert(op, ours);
    }
}

/// What tract's builder made of a node: its expansion (for ours to wrap), or, when it built
/// something else, that op (to be used unchanged); with the builder's extra outputs.
pub type Built = (
    Result<Box<dyn Expansion>, Box<dyn InferenceOp>>,
    Vec<String>,
);

/// Runs tract's builder kept in `kept` on `node`.
pub fn tract_expansion(
    kept: &OnceLock<OpBuilder>,
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<Built> {
    let builder = kept
        .get()
        .with_context(|| format!("{}: tract's builder was not registered", node.op_type))?;
    let (op, extra) = builder(ctx, node)?;
    let op_ref: &dyn InferenceOp = op.as_ref();
    match Downcast::as_any(op_ref).downcast_ref::<Box<dyn Expansion>>() {
        Some(expansion) => Ok((Ok(expansion.clone()), extra)),
        None => Ok((Err(op), extra)),
    }
}
