//! beltbox's extensions to tract, through tract's public API only (no fork, no vendored code).
//!
//! | module | concern |
//! |---|---|
//! | [`qdq`] | QDQ -> QOperator on the ONNX protobuf, before tract parses it: `DQ -> op -> Q` groups become the QLinear op ONNX Runtime's own fusion would run |
//! | [`qconv`] | `QLinearConv` on [`beltbox_kernels`]: replaces tract's builder, packs weights and folds zero points at load |
//! | [`shapes`] | named (symbolic) dimensions in the ONNX graph forgotten before parsing: the manifest's concrete input shape decides |
//! | [`onnx_ops`] | ONNX Runtime contrib ops (`QLinearAdd`, `QGemm`, ...) registered into tract's ONNX op table |
//! | [`replace`] | replacing one of tract-onnx's op builders while keeping it as the fallback (`qconv`, `QuantizeLinear`) |
//! | [`upsample`] | after tract's optimisation: nearest upsampling of 8-bit tensors by row copies (tract's fast path is f32 only) |
//!
//! Layer rule: this crate knows ONNX and tract, and the kernels below it; nothing of model
//! packages, manifests, files or the service (those live in `beltbox-core` and above).

pub mod onnx_ops;
pub mod qconv;
pub mod qdq;
pub mod replace;
pub mod shapes;
pub mod upsample;
