//! Several named inputs and non-float dtypes end to end: an ONNX graph written here (two
//! inputs, an int64 input, int64 and bool outputs), packaged with references computed in
//! the test, loaded and run by `beltbox infer`, and served over HTTP.

mod common;

use std::path::Path;

use beltbox_core::npy;
use beltbox_core::tensor::{Tensor, TensorData};
use common::*;
use prost::Message;
use sha2::{Digest, Sha256};
use tract_onnx::pb::{
    tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

const FLOAT: i32 = 1;
const INT64: i32 = 7;
const BOOL: i32 = 9;

fn info(name: &str, elem_type: i32, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, ints: &[(&str, i64)]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: ints
            .iter()
            .map(|(n, v)| AttributeProto {
                name: n.to_string(),
                r#type: 2, // INT
                i: *v,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// `shift` (int64 [1, 1]) is the graph's FIRST input, `x` (float [1, 5]) the second; the
/// manifest lists them the other way round, so matching by name is exercised.
/// Outputs: `best` = ArgMax(x) (int64 [1]), `positive` = x > 0 (bool [1, 5]),
/// `shifted` = x + float(shift) (float [1, 5]).
fn model() -> Vec<u8> {
    let graph = GraphProto {
        name: "inputs-and-dtypes".into(),
        node: vec![
            node("ArgMax", &["x"], "best", &[("axis", 1), ("keepdims", 0)]),
            node("Greater", &["x", "zero"], "positive", &[]),
            node("Cast", &["shift"], "shift_f", &[("to", FLOAT as i64)]),
            node("Add", &["x", "shift_f"], "shifted", &[]),
        ],
        initializer: vec![tract_onnx::pb::TensorProto {
            name: "zero".into(),
            data_type: FLOAT,
            dims: vec![],
            float_data: vec![0.0],
            ..Default::default()
        }],
        input: vec![info("shift", INT64, &[1, 1]), info("x", FLOAT, &[1, 5])],
        output: vec![
            info("best", INT64, &[1]),
            info("positive", BOOL, &[1, 5]),
            info("shifted", FLOAT, &[1, 5]),
        ],
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// What the graph computes, evaluated here from its definition.
fn expected(x: &[f32], shift: i64) -> (i64, Vec<bool>, Vec<f32>) {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    let positive = x.iter().map(|&v| v > 0.0).collect();
    let shifted = x.iter().map(|&v| v + shift as f32).collect();
    (best as i64, positive, shifted)
}

fn write(dir: &Path, rel: &str, bytes: &[u8], files: &mut Vec<(String, String)>) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    files.push((rel.to_string(), format!("{:x}", Sha256::digest(bytes))));
}

const SAMPLES: [([f32; 5], i64); 2] = [
    ([0.5, -1.0, 2.5, 0.0, 1.0], 3),
    ([-2.0, -0.25, -3.0, -1.0, -0.5], -1_000_000_007),
];

/// A package of the graph above with goldens from `expected`.
fn package(dir: &Path) {
    let mut files = Vec::new();
    write(dir, "model.onnx", &model(), &mut files);
    let mut samples = String::new();
    for (i, (x, shift)) in SAMPLES.iter().enumerate() {
        let (best, positive, shifted) = expected(x, *shift);
        let t = |shape: Vec<usize>, d: TensorData| npy::to_bytes(&Tensor::new(shape, d));
        write(
            dir,
            &format!("golden/{i}.x.npy"),
            &t(vec![1, 5], TensorData::F32(x.to_vec())),
            &mut files,
        );
        write(
            dir,
            &format!("golden/{i}.shift.npy"),
            &t(vec![1, 1], TensorData::I64(vec![*shift])),
            &mut files,
        );
        write(
            dir,
            &format!("golden/{i}.best.npy"),
            &t(vec![1], TensorData::I64(vec![best])),
            &mut files,
        );
        write(
            dir,
            &format!("golden/{i}.positive.npy"),
            &t(vec![1, 5], TensorData::Bool(positive)),
            &mut files,
        );
        write(
            dir,
            &format!("golden/{i}.shifted.npy"),
            &t(vec![1, 5], TensorData::F32(shifted)),
            &mut files,
        );
        samples.push_str(&format!(
            "[[golden.samples]]\ninputs = [\"golden/{i}.x.npy\", \"golden/{i}.shift.npy\"]\n\
             outputs = [\"golden/{i}.best.npy\", \"golden/{i}.positive.npy\", \"golden/{i}.shifted.npy\"]\n\n"
        ));
    }
    let hashes: String = files
        .iter()
        .map(|(f, h)| format!("\"{f}\" = \"{h}\"\n"))
        .collect();
    let manifest = format!(
        r#"name = "inputs-and-dtypes"
version = "1.0.0"
description = "two inputs (one int64), int64/bool/float outputs"

[model]
file = "model.onnx"
format = "onnx"
precision = "fp32"

[[inputs]]
name = "x"
shape = [1, 5]
dtype = "float32"

[[inputs]]
name = "shift"
shape = [1, 1]
dtype = "int64"

[[outputs]]
name = "best"
shape = [1]
dtype = "int64"
task = "raw"

[[outputs]]
name = "positive"
shape = [1, 5]
dtype = "bool"
task = "raw"

[[outputs]]
name = "shifted"
shape = [1, 5]
dtype = "float32"
task = "raw"

[budgets]
ram_mib = 64
p95_ms = 50

[golden]
atol = 0.0

{samples}[files]
{hashes}"#
    );
    std::fs::write(dir.join("manifest.toml"), manifest).unwrap();
}

#[test]
fn two_inputs_by_name_with_int64_and_bool_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    package(&pkg);
    let p = pkg.to_str().unwrap();
    let out = tmp.path().join("out");
    // Inputs given in the graph's order, the opposite of the manifest's.
    let x = pkg.join("golden/1.x.npy");
    let shift = pkg.join("golden/1.shift.npy");
    let o = beltbox(&[
        "infer",
        "--model",
        p,
        "--input",
        &format!("shift={}", shift.display()),
        "--input",
        &format!("x={}", x.display()),
        "--json",
        "--output-npy",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let (best, positive, shifted) = expected(&SAMPLES[1].0, SAMPLES[1].1);
    let outs = v["outputs"].as_array().unwrap();
    assert_eq!(outs[0]["dtype"], "int64");
    assert_eq!(outs[0]["values"][0].as_f64(), Some(best as f64));
    assert_eq!(outs[1]["dtype"], "bool");
    let got: Vec<bool> = outs[1]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_f64() == Some(1.0))
        .collect();
    assert_eq!(got, positive);
    let got: Vec<f32> = outs[2]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(got, shifted);
    // --output-npy keeps the model's dtypes: int64 stays exact.
    let t = npy::parse(&std::fs::read(out.join("0_best.npy")).unwrap()).unwrap();
    assert_eq!(t.data, TensorData::I64(vec![best]));
    let t = npy::parse(&std::fs::read(out.join("1_positive.npy")).unwrap()).unwrap();
    assert_eq!(t.data, TensorData::Bool(positive));
}

#[test]
fn missing_unnamed_and_repeated_inputs_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    package(&pkg);
    let p = pkg.to_str().unwrap();
    let x = format!("x={}", pkg.join("golden/0.x.npy").display());
    let bare = pkg.join("golden/0.x.npy").display().to_string();
    for (args, needle) in [
        (vec![x.as_str()], "no file for input `shift`"),
        (vec![bare.as_str()], "give each as NAME=FILE"),
        (vec![x.as_str(), x.as_str()], "given twice"),
    ] {
        let mut a = vec!["infer", "--model", p];
        for i in &args {
            a.extend(["--input", i]);
        }
        let o = beltbox(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    // An int64 input refuses float data rather than rounding it.
    let f = tmp.path().join("float-shift.npy");
    std::fs::write(
        &f,
        npy::to_bytes(&Tensor::new(vec![1, 1], TensorData::F32(vec![3.0]))),
    )
    .unwrap();
    let o = beltbox(&[
        "infer",
        "--model",
        p,
        "--input",
        &x,
        "--input",
        &format!("shift={}", f.display()),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("int64"), "{}", stderr(&o));
}

#[test]
fn a_golden_sample_with_one_file_for_two_inputs_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    package(&pkg);
    edit_manifest(&pkg, |m| {
        m.replacen(
            "inputs = [\"golden/0.x.npy\", \"golden/0.shift.npy\"]",
            "inputs = [\"golden/0.x.npy\"]",
            1,
        )
    });
    let o = beltbox(&[
        "infer",
        "--model",
        pkg.to_str().unwrap(),
        "--input",
        "x=a",
        "--input",
        "shift=b",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("golden.samples.inputs"),
        "{}",
        stderr(&o)
    );
}
