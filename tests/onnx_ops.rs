//! Checks beltbox's ONNX Runtime contrib ops against ONNX Runtime itself.
//!
//! `tests/data/onnx_ops/gen.py` builds one tiny model per case (mostly single nodes, plus one
//! QOperator-style chain with a symbolic batch) and records ORT's output for seeded random
//! inputs. Each test loads the model through tract with beltbox's ops (`tract_backend::framework`), optimises it, runs
//! it and compares: integer outputs may differ by at most one quantisation step (a float near-tie
//! evaluated in a different order) and are reported when they do, float outputs by 1e-5
//! (relative, absolute below 1). At the time of writing every case is bit-exact.

use std::path::{Path, PathBuf};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{bail, ensure, TractErrorContext};

/// Directory holding the generated models and `.npy` files.
fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx_ops")
}

/// Minimal `.npy` reader: C-order little-endian u8, i8, i32 and f32 arrays (what gen.py writes).
fn read_npy(path: &Path) -> TractResult<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {path:?}"))?;
    ensure!(
        bytes.len() >= 10 && &bytes[..6] == b"\x93NUMPY",
        "{path:?}: not a .npy file"
    );
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            ensure!(bytes.len() >= 12, "{path:?}: truncated header");
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => bail!("{path:?}: unsupported .npy version {v}"),
    };
    let data_start = header_start + header_len;
    ensure!(bytes.len() >= data_start, "{path:?}: truncated header");
    let header = std::str::from_utf8(&bytes[header_start..data_start])?;
    let field = |key: &str| -> TractResult<&str> {
        let at = header
            .find(key)
            .with_context(|| format!("{path:?}: no {key} in {header}"))?;
        Ok(header[at + key.len()..].trim_start_matches([':', ' ']))
    };
    ensure!(
        field("'fortran_order'")?.starts_with("False"),
        "{path:?}: Fortran order"
    );
    let descr = field("'descr'")?;
    let descr = &descr[1..descr[1..].find('\'').context("bad descr")? + 1];
    let shape_text = field("'shape'")?;
    let shape_text = &shape_text[1..shape_text.find(')').context("bad shape")?];
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().context("bad shape dimension"))
        .collect::<TractResult<_>>()?;
    let data = &bytes[data_start..];
    let len: usize = shape.iter().product();
    fn make<T: Datum>(shape: &[usize], v: Vec<T>) -> TractResult<Tensor> {
        Ok(tract_ndarray::ArrayD::from_shape_vec(shape, v)?.into_tensor())
    }
    let item = match descr {
        "|u1" | "|i1" => 1,
        "<i4" | "<f4" => 4,
        other => bail!("{path:?}: unsupported dtype {other}"),
    };
    ensure!(
        data.len() == len * item,
        "{path:?}: expected {len} items of {item} bytes"
    );
    let words = || data.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
    match descr {
        "|u1" => make(&shape, data.to_vec()),
        "|i1" => make(&shape, data.iter().map(|&b| b as i8).collect()),
        "<i4" => make(&shape, words().map(i32::from_le_bytes).collect()),
        _ => make(&shape, words().map(f32::from_le_bytes).collect()),
    }
}

/// The elements of a plain tensor of type `T`.
fn slice<T: Datum>(t: &Tensor) -> &[T] {
    t.try_as_plain_ram().unwrap().as_slice::<T>().unwrap()
}

/// Inputs `NAME.in0.npy`, `NAME.in1.npy`, ... in order.
fn case_inputs(name: &str) -> TractResult<TVec<TValue>> {
    let mut inputs = tvec!();
    loop {
        let path = data_dir().join(format!("{name}.in{}.npy", inputs.len()));
        if !path.exists() {
            return Ok(inputs);
        }
        inputs.push(read_npy(&path)?.into_tvalue());
    }
}

/// A tract ONNX framework with beltbox's ops registered — the contrib ops and the integer
/// QLinearConv, as the runtime loads models — or stock tract.
fn framework(with_beltbox_ops: bool) -> tract_onnx::Onnx {
    if with_beltbox_ops {
        beltbox_core::model::tract_backend::framework()
    } else {
        tract_onnx::onnx()
    }
}

/// Loads, optimises and runs case `name`; returns tract's single output.
fn run_case(name: &str, with_beltbox_ops: bool) -> TractResult<Tensor> {
    let model = framework(with_beltbox_ops)
        .model_for_path(data_dir().join(format!("{name}.onnx")))?
        .into_optimized()?
        .into_runnable()?;
    let mut outputs = model.run(case_inputs(name)?)?;
    ensure!(
        outputs.len() == 1,
        "expected one output, got {}",
        outputs.len()
    );
    Ok(outputs.remove(0).into_tensor())
}

/// ORT's output for case `name`.
fn reference(name: &str) -> Tensor {
    read_npy(&data_dir().join(format!("{name}.out0.npy"))).unwrap()
}

/// How far tract's output is from the reference.
#[derive(Debug)]
struct Agreement {
    total: usize,
    /// Integer outputs: elements one quantisation step away (more fails the comparison).
    off_by_one: usize,
}

/// Asserts `got` matches `expected` within the tolerances above; returns the agreement.
fn compare(name: &str, expected: &Tensor, got: &Tensor) -> Agreement {
    assert_eq!(
        got.datum_type(),
        expected.datum_type(),
        "{name}: output type"
    );
    assert_eq!(got.shape(), expected.shape(), "{name}: output shape");
    let total = expected.len();
    if expected.datum_type() == f32::datum_type() {
        let e = slice::<f32>(expected);
        let g = slice::<f32>(got);
        for (ix, (e, g)) in e.iter().zip(g).enumerate() {
            assert!(
                (e - g).abs() <= 1e-5 * e.abs().max(1.0),
                "{name}: element {ix}: tract {g} vs ORT {e}"
            );
        }
        return Agreement {
            total,
            off_by_one: 0,
        };
    }
    let e = expected.cast_to::<i32>().unwrap();
    let g = got.cast_to::<i32>().unwrap();
    let (e, g) = (slice::<i32>(&e), slice::<i32>(&g));
    let mut off_by_one = 0;
    for (ix, (e, g)) in e.iter().zip(g).enumerate() {
        let diff = (e - g).abs();
        assert!(diff <= 1, "{name}: element {ix}: tract {g} vs ORT {e}");
        off_by_one += (diff == 1) as usize;
    }
    Agreement { total, off_by_one }
}

/// Runs case `name` through tract with beltbox's ops and compares with ORT.
fn check_case(name: &str) {
    let got = run_case(name, true).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let agreement = compare(name, &reference(name), &got);
    eprintln!(
        "{name}: {} elements, {} off by one",
        agreement.total, agreement.off_by_one
    );
    // Off-by-one results only come from near-ties in the float rounding: most must be exact.
    assert!(
        agreement.off_by_one * 10 <= agreement.total,
        "{name}: too many off-by-one results: {agreement:?}"
    );
}

macro_rules! ort_cases {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_case(stringify!($name));
            }
        )*
    };
}

ort_cases!(
    qlinear_add_u8,
    qlinear_add_i8_bcast,
    qlinear_add_u8_no_c_zp,
    qlinear_mul_u8,
    qlinear_mul_i8,
    qlinear_gap_u8,
    qlinear_gap_i8_nhwc,
    qlinear_avgpool_u8,
    qlinear_avgpool_i8_incpad,
    qlinear_avgpool_i8_same_upper,
    qlinear_avgpool_u8_ceil_incpad,
    qlinear_avgpool_u8_nhwc_ceil,
    qlinear_concat_u8,
    qlinear_concat_i8,
    qlinear_sigmoid_u8,
    qlinear_sigmoid_i8,
    qlinear_leaky_relu_u8,
    qlinear_leaky_relu_i8,
    qgemm_u8s8_percol_transb,
    qgemm_u8u8,
    qgemm_i8_alpha_mn_bias,
    qgemm_i8_transa_nobias,
    qgemm_u8s8_float_out,
    qgemm_u8s8_float_out_y_scale,
    qgemm_u8u8_negative_alpha,
    dequantize_per_channel_u8,
    dequantize_per_channel_i8,
    quantize_per_channel_u8,
    quantize_per_channel_i8,
    dequantize_per_channel_axis0_i8,
    quantize_per_channel_axis_last_u8,
    qoperator_chain_dynamic_batch,
    qlinear_conv_u8s8_depthwise,
    qlinear_conv_u8s8_depthwise_s2,
    qlinear_conv_u8s8_pointwise,
    qlinear_conv_i8s8_stem_s2,
    qlinear_conv_u8u8_group2_dilated,
    qlinear_conv_u8u8_1d_same_upper_nobias,
    qlinear_conv_u8s8_dynamic_batch,
);

/// Cases where ORT's arithmetic is exact integer/float steps that beltbox reproduces: every
/// element must be bit-exact (the ties cases are built so that most elements are exact ties,
/// where a different float order lands one step away).
fn check_exact(name: &str, rewrite_qdq: bool) {
    let got = if rewrite_qdq {
        run_case_rewritten(name)
    } else {
        run_case(name, true)
    }
    .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let agreement = compare(name, &reference(name), &got);
    assert_eq!(
        agreement.off_by_one, 0,
        "{name}: {agreement:?} (must be bit-exact with ORT)"
    );
}

/// Loads case `name` the way the runtime does: symbolic dims forgotten and QDQ groups
/// rewritten into QLinear ops before tract parses the graph; optimised, with the rewrite's
/// counts.
fn load_rewritten(name: &str) -> TractResult<(TypedModel, beltbox_tract::qdq::Stats)> {
    let onnx = framework(true);
    let mut proto = onnx.proto_model_for_path(data_dir().join(format!("{name}.onnx")))?;
    beltbox_tract::shapes::forget_symbolic_dims(&mut proto);
    let stats = beltbox_tract::qdq::rewrite(&mut proto);
    let model = onnx.model_for_proto_model(&proto)?.into_optimized()?;
    Ok((model, stats))
}

/// Runs case `name` loaded by [`load_rewritten`]; every QDQ group must have been fused.
fn run_case_rewritten(name: &str) -> TractResult<Tensor> {
    let (model, stats) = load_rewritten(name)?;
    ensure!(
        stats.left_float.is_empty(),
        "{name}: left in float: {stats:?}"
    );
    let mut outputs = model.into_runnable()?.run(case_inputs(name)?)?;
    Ok(outputs.remove(0).into_tensor())
}

/// The op names of case `name`'s optimised graph (sources and constants left out).
fn optimised_ops_rewritten(name: &str) -> TractResult<Vec<String>> {
    let (model, _) = load_rewritten(name)?;
    Ok(model
        .nodes()
        .iter()
        .map(|n| n.op().name().to_string())
        .filter(|o| o != "Source" && o != "Const")
        .collect())
}

#[test]
fn qlinear_softmax_u8() {
    check_exact("qlinear_softmax_u8", false);
}

#[test]
fn qlinear_softmax_i8_axis1() {
    check_exact("qlinear_softmax_i8_axis1", false);
}

#[test]
fn qlinear_softmax_u8_opset11_flatten() {
    check_exact("qlinear_softmax_u8_opset11_flatten", false);
}

/// The QDQ group ORT's quantiser wraps around every Softmax: fused into QLinearSoftmax, it
/// must give ORT's (fused) bytes — it used to output 1.0 for every element.
#[test]
fn qdq_softmax_u8_is_fused_and_exact() {
    check_exact("qdq_softmax_u8", true);
}

/// Activations ORT has no QLinear op for: ORT runs `DQ -> op -> Q` in float per element,
/// beltbox as a 256-entry table of the same function; every code is compared.
#[test]
fn qdq_hard_swish_u8_is_a_table_and_exact() {
    check_exact("qdq_hard_swish_u8", true);
}

#[test]
fn qdq_hard_sigmoid_u8_is_a_table_and_exact() {
    check_exact("qdq_hard_sigmoid_u8", true);
}

/// Activations written as scalar arithmetic around integer ops (HardSwish as
/// `x * clip(x + 3) / 6`, SiLU with a float `* 2` and `- 1`): ORT runs QLinearAdd/QLinearMul
/// and the float scalar ops; beltbox folds each chain into one table. Every code is compared.
#[test]
fn qdq_hard_swish_decomposed_u8_is_exact() {
    check_exact("qdq_hard_swish_decomposed_u8", true);
}

#[test]
fn qdq_silu_scalar_arith_i8_is_exact() {
    check_exact("qdq_silu_scalar_arith_i8", true);
}

/// The folding must actually happen: each chain is one lookup per element in the plan.
#[test]
fn activation_chains_fold_into_one_table() {
    for name in ["qdq_hard_swish_decomposed_u8", "qdq_silu_scalar_arith_i8"] {
        let ops = optimised_ops_rewritten(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(ops, ["BeltboxQLut"], "{name}: {ops:?}");
    }
}

/// Split, nearest Resize and Slice with unchanged parameters run on the codes, bit-exact.
#[test]
fn qdq_split_resize_slice_u8_runs_on_codes() {
    check_exact("qdq_split_resize_slice_u8", true);
    let ops = optimised_ops_rewritten("qdq_split_resize_slice_u8").expect("loads");
    assert!(
        !ops.iter()
            .any(|o| o.contains("Quantize") || o.contains("Cast")),
        "{ops:?}"
    );
}

#[test]
fn qlinear_add_u8_all_ties() {
    check_exact("qlinear_add_u8_all_ties", false);
}

#[test]
fn qlinear_add_i8_ties_scalar_b() {
    check_exact("qlinear_add_i8_ties_scalar_b", false);
}

/// The QLinearConv cases above must run on beltbox's integer kernels, not on tract's
/// fallback (which would pass the same comparison, slowly).
#[test]
fn qlinear_conv_cases_run_on_beltbox_kernels() {
    for name in [
        "qlinear_conv_u8s8_depthwise",
        "qlinear_conv_u8s8_depthwise_s2",
        "qlinear_conv_u8s8_pointwise",
        "qlinear_conv_i8s8_stem_s2",
        "qlinear_conv_u8u8_group2_dilated",
        "qlinear_conv_u8u8_1d_same_upper_nobias",
        "qlinear_conv_u8s8_dynamic_batch",
    ] {
        let model = framework(true)
            .model_for_path(data_dir().join(format!("{name}.onnx")))
            .and_then(|m| m.into_optimized())
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let ops: Vec<String> = model
            .nodes()
            .iter()
            .map(|n| n.op.name().to_string())
            .collect();
        assert!(ops.iter().any(|o| o == "BeltboxQConv"), "{name}: {ops:?}");
    }
}

/// tract's per-tensor QuantizeLinear multiplies by 1 / scale where ORT divides by scale, so on
/// inputs within an ulp of a rounding tie the two may land one step apart. beltbox does not
/// override it (the difference is bounded and tract's lookup-table folding builds on that op);
/// this pins the bound and reports how often it happens on adversarial inputs.
#[test]
fn per_tensor_quantize_near_ties_within_one_step() {
    let name = "quantize_per_tensor_near_ties_u8";
    let got = run_case(name, true).unwrap();
    let agreement = compare(name, &reference(name), &got);
    eprintln!(
        "{name}: {} elements, {} off by one",
        agreement.total, agreement.off_by_one
    );
}

/// Stock tract (without beltbox's ops) rejects the contrib ops: proves the tests above exercise
/// our implementations rather than something tract already had.
#[test]
fn stock_tract_rejects_contrib_ops() {
    for name in [
        "qlinear_add_u8",
        "qlinear_gap_u8",
        "qlinear_concat_u8",
        "qgemm_u8u8",
    ] {
        assert!(
            run_case(name, false).is_err(),
            "{name}: stock tract unexpectedly ran it"
        );
    }
}

/// Whether the typed (not yet optimised) model of case `name` contains tract's quantised EinSum.
fn uses_quantized_einsum(name: &str) -> bool {
    use tract_onnx::tract_core::ops::einsum::EinSum;
    let typed = framework(true)
        .model_for_path(data_dir().join(format!("{name}.onnx")))
        .and_then(|m| m.into_typed())
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    typed
        .nodes()
        .iter()
        .any(|n| n.op_as::<EinSum>().is_some_and(|op| op.q_params.is_some()))
}

/// QGemm takes tract's integer path when its parameters allow it and the float path otherwise;
/// the ORT comparisons above cover both, this pins which case exercises which path.
#[test]
fn qgemm_lowering_paths() {
    for name in [
        "qgemm_u8s8_percol_transb",
        "qgemm_u8u8",
        "qgemm_i8_transa_nobias",
    ] {
        assert!(
            uses_quantized_einsum(name),
            "{name}: expected the quantised EinSum path"
        );
    }
    // (M, N) bias, float output and alpha <= 0 are outside what the quantised EinSum expresses.
    for name in [
        "qgemm_i8_alpha_mn_bias",
        "qgemm_u8s8_float_out",
        "qgemm_u8s8_float_out_y_scale",
        "qgemm_u8u8_negative_alpha",
    ] {
        assert!(
            !uses_quantized_einsum(name),
            "{name}: expected the float path"
        );
    }
}

// Per-channel parameters used by gen.py for the DequantizeLinear/QuantizeLinear cases
// (axis = 1, input shape (2, 4, 3)).
const PER_CHANNEL_SCALES: [f32; 4] = [0.02, 0.05, 0.1, 0.25];
const PER_CHANNEL_ZP_U8: [i32; 4] = [10, 128, 200, 77];
const PER_CHANNEL_ZP_I8: [i32; 4] = [-100, 0, 90, 33];

/// Channel (axis 1) of flat index `ix` in a (2, 4, 3) tensor.
fn channel(ix: usize) -> usize {
    (ix / 3) % 4
}

fn zero_points(name: &str) -> [i32; 4] {
    if name.ends_with("u8") {
        PER_CHANNEL_ZP_U8
    } else {
        PER_CHANNEL_ZP_I8
    }
}

/// Upstream tract issue #2849: some versions applied channel 0's scale/zero point to every
/// channel of a per-axis DequantizeLinear. Recompute the expected values independently (not from
/// ORT), check both stock tract 0.23.9 and the registered framework against them, and check
/// that the channel-0 answer really differs, so the test would catch the bug.
#[test]
fn per_channel_dequantize_uses_each_channels_params() {
    for name in ["dequantize_per_channel_u8", "dequantize_per_channel_i8"] {
        let x = read_npy(&data_dir().join(format!("{name}.in0.npy"))).unwrap();
        let x = x.cast_to::<i32>().unwrap();
        let x = slice::<i32>(&x);
        let zp = zero_points(name);
        let expected: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(ix, &q)| (q - zp[channel(ix)]) as f32 * PER_CHANNEL_SCALES[channel(ix)])
            .collect();
        let channel0: Vec<f32> = x
            .iter()
            .map(|&q| (q - zp[0]) as f32 * PER_CHANNEL_SCALES[0])
            .collect();
        assert!(
            expected
                .iter()
                .zip(&channel0)
                .filter(|(a, b)| (*a - *b).abs() > 1e-3)
                .count()
                > x.len() / 2,
            "{name}: test data cannot tell per-channel from channel-0 parameters"
        );
        for with_beltbox_ops in [false, true] {
            let got = run_case(name, with_beltbox_ops).unwrap();
            for (ix, (e, g)) in expected.iter().zip(slice::<f32>(&got)).enumerate() {
                assert!(
                    (e - g).abs() <= 1e-5 * e.abs().max(1.0),
                    "{name} (beltbox ops: {with_beltbox_ops}): element {ix} channel {}: \
                     tract {g}, expected {e} (channel-0 params would give {})",
                    channel(ix),
                    channel0[ix]
                );
            }
        }
    }
}

/// Same as above for per-axis QuantizeLinear (issue #2849 affected both ops).
#[test]
fn per_channel_quantize_uses_each_channels_params() {
    for name in ["quantize_per_channel_u8", "quantize_per_channel_i8"] {
        let x = read_npy(&data_dir().join(format!("{name}.in0.npy"))).unwrap();
        let x = slice::<f32>(&x);
        let zp = zero_points(name);
        let (lo, hi) = if name.ends_with("u8") {
            (0, 255)
        } else {
            (-128, 127)
        };
        let quantize = |v: f32, c: usize| -> i32 {
            ((v / PER_CHANNEL_SCALES[c]).round_ties_even() as i32 + zp[c]).clamp(lo, hi)
        };
        let expected: Vec<i32> = x
            .iter()
            .enumerate()
            .map(|(ix, &v)| quantize(v, channel(ix)))
            .collect();
        let channel0: Vec<i32> = x.iter().map(|&v| quantize(v, 0)).collect();
        assert!(
            expected
                .iter()
                .zip(&channel0)
                .filter(|(a, b)| (*a - *b).abs() > 1)
                .count()
                > x.len() / 2,
            "{name}: test data cannot tell per-channel from channel-0 parameters"
        );
        for with_beltbox_ops in [false, true] {
            let got = run_case(name, with_beltbox_ops).unwrap();
            let got = got.cast_to::<i32>().unwrap();
            for (ix, (e, g)) in expected.iter().zip(slice::<i32>(&got)).enumerate() {
                assert!(
                    (e - g).abs() <= 1,
                    "{name} (beltbox ops: {with_beltbox_ops}): element {ix} channel {}: \
                     tract {g}, expected {e} (channel-0 params would give {})",
                    channel(ix),
                    channel0[ix]
                );
            }
        }
    }
}

/// Malformed nodes must produce a tract error (at load or when typing), never a panic.
#[test]
fn malformed_nodes_are_errors() {
    let cases = [
        ("bad_qlinear_add_missing_inputs", "B_scale is missing"),
        ("bad_qlinear_add_too_many_inputs", "at most 8 inputs"),
        (
            "bad_qlinear_add_vector_scale",
            "a_scale and a_zero_point must be scalars",
        ),
        ("bad_qlinear_concat_arity", "triples"),
        ("bad_qlinear_avgpool_no_kernel", "kernel_shape"),
        ("bad_qgemm_trans_a", "transA must be 0 or 1"),
    ];
    for (name, message) in cases {
        let result = std::panic::catch_unwind(|| {
            framework(true)
                .model_for_path(data_dir().join(format!("{name}.onnx")))
                .and_then(|m| m.into_optimized())
                .map(|_| ())
        });
        let result = result.unwrap_or_else(|_| panic!("{name}: panicked instead of an error"));
        let error = result.expect_err(name);
        let text = format!("{error:?}");
        assert!(
            text.contains(message),
            "{name}: error does not mention {message:?}: {text}"
        );
    }
}
