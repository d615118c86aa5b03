//! Thin adapter: the optimised tract plan -> [`GraphFacts`] (plain numbers the pure
//! planner works on). Everything tract-specific about memory lives here.
//!
//! What tract's public API lets us see, and what it does not:
//! - seen: the execution order of the optimised plan (`order_without_consts`, the same
//!   RAM-minimising order `SimplePlan` runs), every outlet's `TypedFact`
//!   (`mem_size()` = volume × datum size + the buffer sizes of exotic facts such as
//!   packed operands), and every `Const` node's tensor (weights, including weights the
//!   optimiser pre-packed for the matmul kernels).
//!   The packing of activations for the matmul kernels is a graph node of its own
//!   (`OptMatMulPack`), so packing buffers are activations and come out of the liveness.
//! - not seen: tract-linalg's per-thread matmul scratch (a thread-local blob sized by the
//!   kernel tile, allocated inside the kernel and kept for the thread's life), the size
//!   of the graph structures themselves (nodes, ops, facts, names), and which ops will
//!   compute in place (decided at run time by reference count). The first two are
//!   measured constants in [`super::plan`]; in-place reuse is inferred from the op type
//!   here ([`Alias`]) and checked against the allocator (docs/memory.md).

use tract_core::internal::DimLike;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::change_axes::{AxisOp, IntoShape};
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::konst::Const;
use tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};
use tract_onnx::prelude::*;

use beltbox_tract::qconv::QConv;

use super::plan::{Alias, GraphFacts, Step};
use super::MemoryError;

/// A size, with every dynamic dimension at the value `dims` gives it (its declared
/// maximum: a dynamic model is planned for its largest request).
fn usize_of(what: &str, d: &TDim, dims: &SymbolValues) -> Result<u64, MemoryError> {
    d.eval(dims)
        .to_usize()
        .map(|v| v as u64)
        .map_err(|_| MemoryError::Symbolic(format!("{what} has a symbolic size ({d})")))
}

/// Bytes a constant tensor occupies. Plain tensors: elements × datum size. Exotic
/// storage (weights pre-packed for a kernel) reports its buffers through its fact.
fn tensor_bytes(t: &Tensor) -> Result<u64, MemoryError> {
    if t.is_plain() {
        return Ok((t.len() * t.datum_type().size_of()) as u64);
    }
    match t.exotic_fact() {
        Ok(Some(f)) => usize_of("a packed constant", &f.mem_size(), &SymbolValues::default()),
        // An exotic storage that cannot describe itself: fall back to its logical size
        // rather than refuse to plan (it is at least that big).
        _ => Ok((t.len() * t.datum_type().size_of()) as u64),
    }
}

/// Weights `fuse()` baked into an optimised matmul: packed constant operands. Most
/// convolution and dense weights end up here rather than in `Const` nodes, so counting
/// only `Const` nodes would miss them (mobilenetv2 fp32: 0.3 MiB instead of 13.9 MiB).
fn matmul_weights(op: &OptMatMul) -> Result<u64, MemoryError> {
    let mut weights = 0u64;
    for spec in &op.micro_ops {
        if let ProtoFusedSpec::AddMatMul { a, b, .. } = spec {
            for operand in [a, b] {
                if let MatMulOperand::Const(v) = operand {
                    weights += usize_of(
                        "a packed weight",
                        &v.exotic_fact().mem_size(),
                        &SymbolValues::default(),
                    )?;
                }
            }
        }
    }
    Ok(weights)
}

/// Does this op hand back its first input's buffer when it holds the only reference
/// (the input dies at this step)? tract's element-wise, binary (generic, by-scalar,
/// unicast) and reshaping ops call `into_tensor()` on their first input and compute in
/// place when its type and shape are the output's (checked by the caller).
fn may_reuse_input(node: &TypedNode, op_name: &str) -> bool {
    node.op_as::<ElementWiseOp>().is_some()
        || node.op_as::<TypedBinOp>().is_some()
        || node.op_as::<IntoShape>().is_some()
        || node.op_as::<AxisOp>().is_some()
        || (op_name.starts_with("Opt")
            && (op_name.ends_with("ByScalar") || op_name.ends_with("Unicast")))
}

/// Walks the runnable plan in execution order; `dims` sizes dynamic dimensions.
pub fn graph_facts(
    plan: &TypedRunnableModel,
    dims: &SymbolValues,
) -> Result<GraphFacts, MemoryError> {
    let model = plan.model();
    let mut weights_bytes = 0u64;
    let mut packed_at_load_bytes = 0u64;
    let mut const_count = 0usize;
    for node in model.nodes() {
        if let Some(k) = node.op_as::<Const>() {
            weights_bytes += tensor_bytes(k.val())?;
            const_count += 1;
        } else if let Some(qc) = node.op_as::<QConv>() {
            // Packed integer weights live inside the op, not in a Const.
            weights_bytes += qc.weight_bytes() as u64;
            packed_at_load_bytes += qc.source_weight_bytes() as u64;
            const_count += 1;
        } else if let Some(mm) = node.op_as::<OptMatMul>() {
            let w = matmul_weights(mm)?;
            weights_bytes += w;
            if w > 0 {
                const_count += 1;
            }
        }
    }
    let order = plan.order_without_consts();
    let mut steps = Vec::with_capacity(order.len());
    for &id in order {
        let node = model.node(id);
        let op = node.op.name().to_string();
        let mut output_bytes = 0u64;
        for o in &node.outputs {
            output_bytes += usize_of(
                &format!("output of node `{}`", node.name),
                &o.fact.mem_size(),
                dims,
            )?;
        }
        let first_input = node.inputs.first().map(|i| (i.node, model.outlet_fact(*i)));
        let alias = match first_input {
            // LazyIm2col's output is a view: offset tables plus a reference that keeps
            // its input alive; its fact describes the packed matrix it never builds.
            Some((src, _)) if op == "LazyIm2col" => {
                output_bytes = 0;
                Alias::Views(src)
            }
            Some((src, Ok(f)))
                if node.outputs.len() == 1
                    && may_reuse_input(node, &op)
                    && f.datum_type == node.outputs[0].fact.datum_type
                    && f.mem_size() == node.outputs[0].fact.mem_size() =>
            {
                Alias::MayReuse(src)
            }
            _ => Alias::None,
        };
        steps.push(Step {
            node: id,
            name: node.name.clone(),
            op,
            inputs: node.inputs.iter().map(|i| i.node).collect(),
            output_bytes,
            scratch_bytes: match (node.op_as::<QConv>(), first_input) {
                (Some(q), Some((_, Ok(f)))) => match f.shape.eval_to_usize(dims) {
                    Ok(shape) => q.scratch_bytes(&shape) as u64,
                    Err(_) => {
                        return Err(MemoryError::Symbolic(format!(
                            "input of node `{}` has a symbolic shape ({:?})",
                            node.name, f.shape
                        )))
                    }
                },
                _ => 0,
            },
            alias,
        });
    }
    let outputs = model
        .output_outlets()
        .map_err(|e| MemoryError::Backend(e.to_string()))?
        .iter()
        .map(|o| o.node)
        .collect();
    Ok(GraphFacts {
        weights_bytes,
        packed_at_load_bytes,
        const_count,
        node_count: model.nodes().len(),
        steps,
        outputs,
    })
}
