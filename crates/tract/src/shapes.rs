//! Symbolic shapes an exporter wrote into the graph, forgotten before tract parses it.
//!
//! Converters annotate inputs, outputs and `value_info` with named dimensions
//! (`DynamicDimension.0`, `batch`, sympy expressions such as `floor(height/2 - 1/2) + 1`).
//! beltbox always runs a model at the one concrete input shape its manifest states, and
//! tract derives every other shape from it. A symbol it cannot relate to that shape only
//! gets in the way: tract refused 4 of 5 real FP32 exports with
//! `Impossible to unify Sym(DynamicDimension.0) with Val(1)` once the input was fixed.
//! So every named dimension becomes an unknown one (integers and element types stay, so
//! tract still checks what the exporter knew for certain).

use tract_onnx::pb::{tensor_shape_proto, type_proto, ModelProto, ValueInfoProto};

/// Replaces every `dim_param` of the main graph's inputs, outputs and `value_info` with an
/// unknown dimension; returns how many it replaced.
pub fn forget_symbolic_dims(model: &mut ModelProto) -> usize {
    let Some(graph) = model.graph.as_mut() else {
        return 0;
    };
    graph
        .input
        .iter_mut()
        .chain(graph.output.iter_mut())
        .chain(graph.value_info.iter_mut())
        .map(forget_in)
        .sum()
}

/// For a model run with dynamic dimensions: drops every shape annotation past the inputs
/// (`value_info`, output shapes). A converter that fixed the shapes (ORT's
/// `quant_pre_process` writes `[1, 3, 320, 320]` through the whole graph) would clash with
/// a symbolic input; tract re-derives every shape from the inputs anyway.
pub fn forget_inner_shapes(model: &mut ModelProto) {
    let Some(graph) = model.graph.as_mut() else {
        return;
    };
    graph.value_info.clear();
    for o in &mut graph.output {
        if let Some(type_proto::Value::TensorType(t)) =
            o.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.shape = None;
        }
    }
}

fn forget_in(v: &mut ValueInfoProto) -> usize {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        return 0;
    };
    let Some(shape) = t.shape.as_mut() else {
        return 0;
    };
    let mut n = 0;
    for d in &mut shape.dim {
        if matches!(
            d.value,
            Some(tensor_shape_proto::dimension::Value::DimParam(_))
        ) {
            d.value = None;
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{tensor_shape_proto::Dimension, TensorShapeProto, TypeProto};

    fn info(name: &str, dims: &[Result<i64, &str>]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Ok(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                    Err(p) => tensor_shape_proto::dimension::Value::DimParam(p.to_string()),
                }),
                ..Default::default()
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(TensorShapeProto { dim }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn named_dims_become_unknown_and_integers_stay() {
        let mut m = ModelProto {
            graph: Some(tract_onnx::pb::GraphProto {
                input: vec![info("x", &[Err("DynamicDimension.0"), Ok(3)])],
                output: vec![info("y", &[Err("batch"), Err("floor(h/2) + 1")])],
                value_info: vec![info("t", &[Ok(1), Err("n")])],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(forget_symbolic_dims(&mut m), 4);
        let g = m.graph.as_ref().map(|g| g.value_info[0].clone());
        let dims = match g.and_then(|v| v.r#type).and_then(|t| t.value) {
            Some(type_proto::Value::TensorType(t)) => t.shape.map(|s| s.dim).unwrap_or_default(),
            _ => vec![],
        };
        assert_eq!(
            dims[0].value,
            Some(tensor_shape_proto::dimension::Value::DimValue(1))
        );
        assert_eq!(dims[1].value, None);
        assert_eq!(forget_symbolic_dims(&mut m), 0);
    }
}
