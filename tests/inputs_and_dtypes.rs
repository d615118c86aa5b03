//! Several named inputs, non-float dtypes and dynamic dimensions end to end: ONNX graphs
//! written here (two inputs, an int64 input, int64 and bool outputs; three QLinearConvs on
//! an input of symbolic height and width), packaged with references computed in the test
//! and loaded and run through the product path.

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

/// `graph` as an opset-13 ONNX file.
fn encode(graph: GraphProto) -> Vec<u8> {
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
    encode(graph)
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

/// The manifest's `[files]` lines for what `write` wrote.
fn files_table(files: &[(String, String)]) -> String {
    files
        .iter()
        .map(|(f, h)| format!("\"{f}\" = \"{h}\"\n"))
        .collect()
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
    let hashes = files_table(&files);
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

// ---------------------------------------------------------------------------------------
// Dynamic dimensions: a graph with symbolic height and width, run at every shape a
// declared range allows.

const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;

/// A dimension of a graph input or output: a number or a named (symbolic) one.
enum Dim {
    Val(i64),
    Sym(&'static str),
}

fn info_dims(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let mut v = info(name, elem_type, &[]);
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = Some(TensorShapeProto {
            dim: dims
                .iter()
                .map(|d| tensor_shape_proto::Dimension {
                    value: Some(match d {
                        Dim::Val(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                        Dim::Sym(s) => {
                            tensor_shape_proto::dimension::Value::DimParam(s.to_string())
                        }
                    }),
                    ..Default::default()
                })
                .collect(),
        });
    }
    v
}

/// One QLinearConv of the test graph, and its arithmetic (ONNX's QLinearConv as ONNX
/// Runtime computes it: exact i32 sums, `x_scale * w_scale / y_scale` in f32, round half
/// to even, add the zero point, saturate).
struct Conv {
    name: &'static str,
    m: usize,
    group: usize,
    k: usize,
    stride: usize,
    /// `None`: auto_pad SAME_UPPER; else explicit pads on every side.
    pad: Option<usize>,
    w: Vec<i8>,
    w_scale: Vec<f32>,
    bias: Vec<i32>,
}

const C_IN: usize = 2;
const X_SCALE: f32 = 0.02;
const X_ZP: u8 = 128;
const Y_SCALE: f32 = 0.05;
const Y_ZP: u8 = 100;

fn convs() -> Vec<Conv> {
    let mut rng = fastrand::Rng::with_seed(20261130);
    let mut conv = |name, m: usize, group: usize, k: usize, stride, pad| {
        let taps = C_IN / group * k * k;
        Conv {
            name,
            m,
            group,
            k,
            stride,
            pad,
            w: (0..m * taps).map(|_| rng.i8(-127..=127)).collect(),
            w_scale: (0..m).map(|_| 0.002 + rng.f32() * 0.01).collect(),
            bias: (0..m).map(|_| rng.i32(-2000..=2000)).collect(),
        }
    };
    vec![
        // im2col GEMM; SAME pads depend on the parity of each request's size.
        conv("same", 4, 1, 3, 2, None),
        // depthwise, explicit pads
        conv("depthwise", C_IN, C_IN, 3, 1, Some(1)),
        // pointwise GEMM (the input is the matrix)
        conv("pointwise", 3, 1, 1, 1, Some(0)),
    ]
}

impl Conv {
    /// Output size and (top/left) padding for an input of `n` along one axis.
    fn axis(&self, n: usize) -> (usize, usize) {
        match self.pad {
            None => {
                let out = n.div_ceil(self.stride);
                let need = ((out - 1) * self.stride + self.k).saturating_sub(n);
                (out, need / 2)
            }
            Some(p) => ((n + 2 * p - self.k) / self.stride + 1, p),
        }
    }

    fn reference(&self, x: &[u8], h: usize, w: usize) -> (Vec<usize>, Vec<u8>) {
        let ((oh, top), (ow, left)) = (self.axis(h), self.axis(w));
        let (cg, mg) = (C_IN / self.group, self.m / self.group);
        let mut y = Vec::with_capacity(self.m * oh * ow);
        for oc in 0..self.m {
            let scale = X_SCALE * self.w_scale[oc] / Y_SCALE;
            let g = oc / mg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = self.bias[oc];
                    for ic in 0..cg {
                        for ky in 0..self.k {
                            for kx in 0..self.k {
                                let iy = (oy * self.stride + ky) as isize - top as isize;
                                let ix = (ox * self.stride + kx) as isize - left as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                    continue;
                                }
                                let c = g * cg + ic;
                                let xv = x[(c * h + iy as usize) * w + ix as usize] as i32;
                                let wv = self.w[((oc * cg + ic) * self.k + ky) * self.k + kx];
                                acc += (xv - X_ZP as i32) * wv as i32;
                            }
                        }
                    }
                    let v = (acc as f32 * scale).round_ties_even() + Y_ZP as f32;
                    y.push(v.clamp(0.0, 255.0) as u8);
                }
            }
        }
        (vec![1, self.m, oh, ow], y)
    }

    fn nodes(&self, graph: &mut GraphProto) {
        let n = self.name;
        let k = self.k as i64;
        let tensor = |name: String, data_type: i32, dims: Vec<i64>| tract_onnx::pb::TensorProto {
            name,
            data_type,
            dims,
            ..Default::default()
        };
        let mut w = tensor(
            format!("{n}.w"),
            INT8,
            vec![self.m as i64, (C_IN / self.group) as i64, k, k],
        );
        w.raw_data = self.w.iter().map(|&v| v as u8).collect();
        let mut ws = tensor(format!("{n}.ws"), FLOAT, vec![self.m as i64]);
        ws.float_data = self.w_scale.clone();
        let mut wzp = tensor(format!("{n}.wzp"), INT8, vec![self.m as i64]);
        wzp.raw_data = vec![0; self.m];
        let mut b = tensor(format!("{n}.b"), INT32, vec![self.m as i64]);
        b.int32_data = self.bias.clone();
        graph.initializer.extend([w, ws, wzp, b]);
        let inputs = [
            "x".to_string(),
            "xs".into(),
            "xzp".into(),
            format!("{n}.w"),
            format!("{n}.ws"),
            format!("{n}.wzp"),
            "ys".into(),
            "yzp".into(),
            format!("{n}.b"),
        ];
        let ints = |name: &str, v: Vec<i64>| AttributeProto {
            name: name.into(),
            r#type: 7, // INTS
            ints: v,
            ..Default::default()
        };
        let mut attribute = vec![
            ints("kernel_shape", vec![k, k]),
            ints("strides", vec![self.stride as i64; 2]),
            AttributeProto {
                name: "group".into(),
                r#type: 2,
                i: self.group as i64,
                ..Default::default()
            },
        ];
        attribute.push(match self.pad {
            None => AttributeProto {
                name: "auto_pad".into(),
                r#type: 3, // STRING
                s: b"SAME_UPPER".to_vec(),
                ..Default::default()
            },
            Some(p) => ints("pads", vec![p as i64; 4]),
        });
        graph.node.push(NodeProto {
            op_type: "QLinearConv".into(),
            name: n.into(),
            input: inputs.to_vec(),
            output: vec![n.into()],
            attribute,
            ..Default::default()
        });
        graph.output.push(info_dims(
            n,
            UINT8,
            &[
                Dim::Val(1),
                Dim::Val(self.m as i64),
                Dim::Sym("oh"),
                Dim::Sym("ow"),
            ],
        ));
    }
}

/// x: uint8 [1, 2, height, width] with symbolic height and width; three QLinearConvs
/// (SAME-padded strided, depthwise, pointwise) read it, one output each.
fn dynamic_model(convs: &[Conv]) -> Vec<u8> {
    let scalar = |name: &str, data_type: i32| tract_onnx::pb::TensorProto {
        name: name.into(),
        data_type,
        ..Default::default()
    };
    let mut xs = scalar("xs", FLOAT);
    xs.float_data = vec![X_SCALE];
    let mut xzp = scalar("xzp", UINT8);
    xzp.raw_data = vec![X_ZP];
    let mut ys = scalar("ys", FLOAT);
    ys.float_data = vec![Y_SCALE];
    let mut yzp = scalar("yzp", UINT8);
    yzp.raw_data = vec![Y_ZP];
    let mut graph = GraphProto {
        name: "dynamic".into(),
        initializer: vec![xs, xzp, ys, yzp],
        input: vec![info_dims(
            "x",
            UINT8,
            &[
                Dim::Val(1),
                Dim::Val(C_IN as i64),
                Dim::Sym("height"),
                Dim::Sym("width"),
            ],
        )],
        ..Default::default()
    };
    for c in convs {
        c.nodes(&mut graph);
    }
    encode(graph)
}

fn random_input(rng: &mut fastrand::Rng, h: usize, w: usize) -> Vec<u8> {
    (0..C_IN * h * w).map(|_| rng.u8(..)).collect()
}

/// A package of `dynamic_model` at `shape` (height, width), with `range` lines (or none)
/// added to its input; goldens from `Conv::reference`.
fn dynamic_package(dir: &Path, shape: (usize, usize), range: &str) {
    let convs = convs();
    let mut files = Vec::new();
    write(dir, "model.onnx", &dynamic_model(&convs), &mut files);
    let mut rng = fastrand::Rng::with_seed(7);
    let (h, w) = shape;
    let mut samples = String::new();
    for i in 0..2 {
        let x = random_input(&mut rng, h, w);
        let t =
            |shape: Vec<usize>, d: Vec<u8>| npy::to_bytes(&Tensor::new(shape, TensorData::U8(d)));
        write(
            dir,
            &format!("golden/{i}.x.npy"),
            &t(vec![1, C_IN, h, w], x.clone()),
            &mut files,
        );
        let mut outs = Vec::new();
        for c in &convs {
            let (shape, y) = c.reference(&x, h, w);
            let f = format!("golden/{i}.{}.npy", c.name);
            write(dir, &f, &t(shape, y), &mut files);
            outs.push(format!("\"{f}\""));
        }
        samples.push_str(&format!(
            "[[golden.samples]]\ninputs = [\"golden/{i}.x.npy\"]\noutputs = [{}]\n\n",
            outs.join(", ")
        ));
    }
    let outputs: String = convs
        .iter()
        .map(|c| {
            let (oh, ow) = (c.axis(h).0, c.axis(w).0);
            format!(
                "[[outputs]]\nname = \"{}\"\nshape = [1, {}, {oh}, {ow}]\ndtype = \"uint8\"\n\
                 task = \"raw\"\nquantization = {{ scale = {Y_SCALE}, zero_point = {Y_ZP} }}\n\n",
                c.name, c.m
            )
        })
        .collect();
    let hashes = files_table(&files);
    let manifest = format!(
        r#"name = "dynamic"
version = "1.0.0"
description = "three QLinearConvs on an input of symbolic height and width"

[model]
file = "model.onnx"
format = "onnx"
precision = "int8-qoperator"

[[inputs]]
name = "x"
shape = [1, {C_IN}, {h}, {w}]
{range}
dtype = "uint8"
quantization = {{ scale = {X_SCALE}, zero_point = {X_ZP} }}

{outputs}[budgets]
ram_mib = 64
p95_ms = 50

[golden]
atol = 0.0

{samples}[files]
{hashes}"#
    );
    std::fs::write(dir.join("manifest.toml"), manifest).unwrap();
}

const RANGE: &str = "min_shape = [1, 2, 1, 1]\nmax_shape = [1, 2, 33, 40]";

#[test]
fn dynamic_dims_run_exactly_at_every_shape_in_the_range() {
    use beltbox_core::model::{LoadOptions, Model};
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    dynamic_package(&pkg, (8, 8), RANGE);
    let opts = LoadOptions {
        threads: 1,
        tflite_library: None,
    };
    let model = Model::load(&pkg, &opts).unwrap_or_else(|e| panic!("{e}"));
    let convs = convs();
    let mut rng = fastrand::Rng::with_seed(11);
    // Both ends of the range, odd and even sizes (SAME pads change with parity), tall,
    // wide, and back to the manifest's shape (the states are reused between sizes).
    for (h, w) in [
        (1, 1),
        (33, 40),
        (7, 13),
        (8, 8),
        (2, 39),
        (33, 1),
        (16, 5),
        (8, 8),
    ] {
        let x = random_input(&mut rng, h, w);
        let mut t = Tensor::new(vec![1, C_IN, h, w], TensorData::U8(x.clone()));
        t.quant = model.manifest().inputs[0].quantization;
        let outs = model
            .run_tensors(&[t])
            .unwrap_or_else(|e| panic!("{h}x{w}: {e}"));
        for (c, out) in convs.iter().zip(&outs) {
            let (shape, y) = c.reference(&x, h, w);
            assert_eq!(out.shape, shape, "{h}x{w} {}", c.name);
            assert_eq!(out.data, TensorData::U8(y), "{h}x{w} {}", c.name);
        }
    }
}

#[test]
fn a_dynamic_model_is_planned_at_its_largest_shape() {
    use beltbox_core::model::{LoadOptions, Model};
    let tmp = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        threads: 1,
        tflite_library: None,
    };
    let dynamic = tmp.path().join("dynamic");
    dynamic_package(&dynamic, (8, 8), RANGE);
    let largest = tmp.path().join("largest");
    dynamic_package(&largest, (33, 40), "");
    let smallest = tmp.path().join("smallest");
    dynamic_package(&smallest, (8, 8), "");
    let plan = |p: &Path| Model::load(p, &opts).unwrap_or_else(|e| panic!("{e}")).plan;
    let (d, l, s) = (plan(&dynamic), plan(&largest), plan(&smallest));
    // Activations, scratch and the request's input: what a static model at the maximum
    // needs, not what the manifest's `shape` needs.
    assert!(d.activation_bytes >= l.activation_bytes, "{d:?}\n{l:?}");
    assert!(d.activation_bytes > s.activation_bytes, "{d:?}\n{s:?}");
    assert!(
        d.per_request_bytes() >= l.per_request_bytes(),
        "{d:?}\n{l:?}"
    );
}

#[test]
fn a_request_outside_the_declared_range_is_refused_naming_the_range() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    dynamic_package(&pkg, (8, 8), RANGE);
    let p = pkg.to_str().unwrap();
    for (name, shape) in [
        ("too-tall", vec![1, C_IN, 34, 8]),
        ("too-wide", vec![1, C_IN, 8, 41]),
        ("wrong-channels", vec![1, 3, 8, 8]),
        ("wrong-rank", vec![C_IN, 8, 8]),
    ] {
        let f = tmp.path().join(format!("{name}.npy"));
        let n = shape.iter().product();
        std::fs::write(
            &f,
            npy::to_bytes(&Tensor::new(shape, TensorData::U8(vec![0; n]))),
        )
        .unwrap();
        let o = beltbox(&["infer", "--model", p, "--input", f.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("[1, 2, 1..=33, 1..=40]"),
            "{name}: {}",
            stderr(&o)
        );
    }
    // Within the range, on the CLI: the output has the request's size.
    let f = tmp.path().join("ok.npy");
    std::fs::write(
        &f,
        npy::to_bytes(&Tensor::new(
            vec![1, C_IN, 5, 31],
            TensorData::U8(vec![9; 310]),
        )),
    )
    .unwrap();
    let o = beltbox(&[
        "infer",
        "--model",
        p,
        "--input",
        f.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        json(&o)["outputs"][0]["shape"],
        serde_json::json!([1, 4, 3, 16])
    );
}

#[test]
fn a_range_the_graph_cannot_take_is_refused_at_load() {
    // Reshape to a constant [5], as converters that fixed the input shape write: only a
    // width of 5 fits, so a range 2..=9 cannot type and the load says why.
    let mut shape = tract_onnx::pb::TensorProto {
        name: "five".into(),
        data_type: INT64,
        dims: vec![1],
        ..Default::default()
    };
    shape.int64_data = vec![5];
    let graph = GraphProto {
        name: "fixed-reshape".into(),
        node: vec![node("Reshape", &["x", "five"], "y", &[])],
        initializer: vec![shape],
        input: vec![info_dims("x", FLOAT, &[Dim::Val(1), Dim::Sym("n")])],
        output: vec![info("y", FLOAT, &[5])],
        ..Default::default()
    };
    let model = encode(graph);
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    let mut files = Vec::new();
    write(&pkg, "model.onnx", &model, &mut files);
    let x = npy::to_bytes(&Tensor::new(vec![1, 5], TensorData::F32(vec![1.0; 5])));
    write(&pkg, "golden/0.x.npy", &x, &mut files);
    let y = npy::to_bytes(&Tensor::new(vec![5], TensorData::F32(vec![1.0; 5])));
    write(&pkg, "golden/0.y.npy", &y, &mut files);
    let hashes = files_table(&files);
    let manifest = |range: &str| {
        format!(
            "name = \"fixed-reshape\"\nversion = \"1.0.0\"\ndescription = \"d\"\n\n\
             [model]\nfile = \"model.onnx\"\nformat = \"onnx\"\nprecision = \"fp32\"\n\n\
             [[inputs]]\nname = \"x\"\nshape = [1, 5]\n{range}dtype = \"float32\"\n\n\
             [[outputs]]\nname = \"y\"\nshape = [5]\ndtype = \"float32\"\ntask = \"raw\"\n\n\
             [budgets]\nram_mib = 64\np95_ms = 50\n\n[golden]\natol = 0.0\n\n\
             [[golden.samples]]\ninputs = [\"golden/0.x.npy\"]\noutputs = [\"golden/0.y.npy\"]\n\n\
             [files]\n{hashes}"
        )
    };
    let x = pkg.join("golden/0.x.npy");
    let run = || {
        beltbox(&[
            "infer",
            "--model",
            pkg.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
        ])
    };
    std::fs::write(pkg.join("manifest.toml"), manifest("")).unwrap();
    let o = run();
    assert!(o.status.success(), "static: {}", stderr(&o));
    std::fs::write(
        pkg.join("manifest.toml"),
        manifest("min_shape = [1, 2]\nmax_shape = [1, 9]\n"),
    )
    .unwrap();
    let o = run();
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("min_shape/max_shape"), "{}", stderr(&o));
}
