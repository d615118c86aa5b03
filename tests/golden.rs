//! Every bundled package loads through the library (strict manifest, hashes, backend,
//! golden self-check) and reproduces its reference outputs within the manifest tolerance.
//! The digits INT8 packages use per-channel weight quantisation, so a backend that used
//! one channel's scale for all (upstream tract #2849) fails here.

use std::path::PathBuf;

mod common;
use common::tflite_library;

use beltbox_core::model::{LoadOptions, Model};
use beltbox_core::preprocess::InputKind;

fn pkg(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

fn load(name: &str, threads: usize) -> Model {
    let opts = LoadOptions {
        threads,
        tflite_library: tflite_library(),
    };
    Model::load(&pkg(name), &opts).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn check(name: &str, threads: usize) {
    let m = load(name, threads);
    let g = &m.info.golden;
    assert!(g.samples >= 4, "{name}: only {} golden samples", g.samples);
    assert_eq!(g.passed, g.samples, "{name}");
    // One quantisation step, dequantised as (q - zp) * scale on both sides, can come out a
    // few ulps above `scale`: the same slack the self-check allows.
    assert!(
        g.worst_ratio <= 1.0 + 1e-5,
        "{name}: worst diff {} of tolerance",
        g.worst_ratio
    );
    // Held-out accuracy recorded by the generator meets the floor the package promises.
    let man = m.manifest();
    let (acc, floor) = (man.accuracy.as_ref(), man.accuracy_floor);
    if let (Some(acc), Some(floor)) = (acc, floor) {
        assert!(acc.heldout_top1 >= floor, "{name}");
    }
    eprintln!(
        "{name}: {} samples, max |diff| {:.6} ({:.2} of tolerance)",
        g.samples, g.max_abs_diff, g.worst_ratio
    );
}

#[test]
fn digits_fp32() {
    check("digits-fp32", 1);
}

#[test]
fn digits_int8_qdq_per_channel() {
    check("digits-int8-qdq", 1);
}

#[test]
fn digits_int8_qoperator_per_channel() {
    check("digits-int8-qoperator", 1);
}

#[test]
fn digits_two_threads_agree_with_one() {
    let a = load("digits-int8-qoperator", 1);
    let b = load("digits-int8-qoperator", 2);
    let bytes = std::fs::read(pkg("digits-int8-qoperator").join("golden/004.pgm")).unwrap();
    let ra = a.infer(&[(&bytes[..], InputKind::Auto)], 10).unwrap();
    let rb = b.infer(&[(&bytes[..], InputKind::Auto)], 10).unwrap();
    assert_eq!(ra.outputs, rb.outputs);
}

#[test]
fn mobilenet_fp32() {
    check("mobilenetv2-bench-fp32", 1);
}

#[test]
fn mobilenet_int8_qdq() {
    check("mobilenetv2-bench-int8-qdq", 1);
}

#[test]
fn mobilenet_int8_qoperator() {
    check("mobilenetv2-bench-int8-qoperator", 1);
}

#[cfg(feature = "tflite")]
#[test]
fn digits_int8_tflite() {
    check("digits-int8-tflite", 1);
}

#[cfg(not(any(feature = "tflite", feature = "tflitec")))]
#[test]
fn tflite_without_feature_is_a_clear_error() {
    let e = Model::load(&pkg("digits-int8-tflite"), &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("`tflite` cargo feature"), "{e}");
}

/// TensorFlow Lite 2.6's C library (shipped inside the `tflitec` 0.7 crate, extracted by
/// cross/fetch-tflitec-lib.sh) runs the per-channel INT8 digits model wrongly. Loading the
/// package through it must be refused by the golden self-check: silently wrong numbers
/// must be impossible, whatever the backend. In CI the library is always fetched, so the
/// test cannot quietly skip there.
#[cfg(all(feature = "tflite", feature = "tflitec"))]
#[test]
fn miscomputing_tflite_runtime_is_refused_at_load() {
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/tflitec/x86_64/libtensorflowlite_c.so");
    if !lib.is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run cross/fetch-tflitec-lib.sh first"
        );
        eprintln!(
            "{} absent (run cross/fetch-tflitec-lib.sh); skipped",
            lib.display()
        );
        return;
    }
    let opts = LoadOptions {
        threads: 1,
        tflite_library: Some(lib),
    };
    let err = Model::load(&pkg("digits-int8-tflite"), &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("golden self-check failed"), "{err}");
    assert!(err.contains("digits-int8-tflite"), "{err}");
    // The same package through LiteRT loads fine: the fault is the runtime's, not the model's.
    check("digits-int8-tflite", 1);
}
