//! Held-out accuracy of the bundled digits packages, measured here by running them.
//!
//! Every sample of the digits held-out split (`models/digits-heldout/`, written by
//! `models/generate.py`: the 360 images the packages' `[accuracy]` figures were computed on)
//! takes the path a user's file takes: an 8x8 binary PGM with maxval 16 (the golden inputs'
//! form) into `Model::infer` (the manifest's preprocessing, the backend, top-k). Top-1 is
//! compared with the label. The manifests' own figures are not used: they were measured by
//! ONNX Runtime / TFLite when the packages were generated and say nothing about beltbox.
//!
//! Asserts: FP32 reaches 95 % (the split, the preprocessing and the backend are right), every
//! variant meets its manifest's `accuracy_floor`, and every INT8 variant is within one
//! percentage point of the FP32 accuracy measured in the same run.
//! `cargo test --test accuracy -- --nocapture` prints the numbers.

use std::path::PathBuf;

use beltbox_core::model::{LoadOptions, Model};
use beltbox_core::npy;
use beltbox_core::preprocess::InputKind;
use beltbox_core::tensor::TensorData;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The held-out split as (PGM file bytes, label) pairs.
fn heldout() -> Vec<(Vec<u8>, usize)> {
    let dir = repo().join("models/digits-heldout");
    let read = |name: &str| {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        npy::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let images = read("images.npy");
    let labels = read("labels.npy");
    let (TensorData::U8(pixels), TensorData::U8(label_values)) = (&images.data, &labels.data)
    else {
        panic!("images.npy and labels.npy must be uint8");
    };
    let n = label_values.len();
    assert!(n > 0, "empty held-out split");
    assert_eq!(labels.shape, vec![n], "labels.npy shape");
    assert_eq!(images.shape, vec![n, 8, 8], "images.npy shape");
    pixels
        .chunks_exact(64)
        .zip(label_values)
        .map(|(px, &label)| {
            assert!(px.iter().all(|&p| p <= 16), "pixel above the maxval 16");
            assert!(label <= 9, "label {label}");
            // Exactly what generate.py's write_pgm writes for the golden samples.
            let mut pgm = b"P5\n8 8\n16\n".to_vec();
            pgm.extend_from_slice(px);
            (pgm, usize::from(label))
        })
        .collect()
}

/// Loads a bundled package (golden self-check included), runs the whole split through
/// `Model::infer` and returns the number of correct top-1 answers.
fn correct(name: &str, opts: &LoadOptions, split: &[(Vec<u8>, usize)]) -> usize {
    let model = Model::load(&repo().join("models").join(name), opts)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let man = model.manifest();
    let recorded = man
        .accuracy
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: the digits packages record [accuracy]"));
    let floor = man
        .accuracy_floor
        .unwrap_or_else(|| panic!("{name}: the digits packages state an accuracy_floor"));
    assert_eq!(
        recorded.heldout_samples,
        split.len() as u64,
        "{name}: the manifest's held-out split is not the one in models/digits-heldout"
    );
    let mut wrong = Vec::new();
    for (i, (pgm, label)) in split.iter().enumerate() {
        let r = model
            .infer(&[(pgm, InputKind::Auto)], 1)
            .unwrap_or_else(|e| panic!("{name}: held-out sample {i}: {e}"));
        let top1 = r
            .classes
            .first()
            .unwrap_or_else(|| panic!("{name}: no classes for sample {i}"))
            .index;
        if top1 != *label {
            wrong.push(i);
        }
    }
    let n = split.len();
    let ok = n - wrong.len();
    let acc = ok as f64 / n as f64;
    eprintln!(
        "{name}: held-out top-1 {acc:.4} ({ok}/{n}; the manifest records {:.4}), misclassified: {:?}{}",
        recorded.heldout_top1,
        &wrong[..wrong.len().min(20)],
        if wrong.len() > 20 { " ..." } else { "" },
    );
    assert!(
        acc >= floor,
        "{name}: held-out top-1 {acc:.4} is below the package's accuracy_floor {floor}"
    );
    ok
}

/// Options for the TFLite variant, or `None` when the LiteRT library is absent (the variant
/// is skipped; in CI, where cross/fetch-litert.sh always runs first, that is a failure).
#[cfg(feature = "tflite")]
fn litert_options() -> Option<LoadOptions> {
    use beltbox_core::model::tflite::LIBRARY_ENV;
    // When $BELTBOX_LITERT_LIB is set, the default lookup uses it; otherwise point at the
    // library cross/fetch-litert.sh fetched.
    let (lib, explicit) = match std::env::var_os(LIBRARY_ENV) {
        Some(p) => (PathBuf::from(p), None),
        None => {
            let p = repo()
                .join(".cache/litert")
                .join(std::env::consts::ARCH)
                .join("libLiteRt.so");
            (p.clone(), Some(p))
        }
    };
    if !lib.is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "LiteRT library {} missing: CI must run cross/fetch-litert.sh first",
            lib.display()
        );
        eprintln!(
            "digits-int8-tflite: LiteRT library {} absent (run cross/fetch-litert.sh); not measured",
            lib.display()
        );
        return None;
    }
    Some(LoadOptions {
        tflite_library: explicit,
        ..LoadOptions::default()
    })
}

/// ("digits-int8-tflite", correct answers), when it can be measured.
#[cfg(feature = "tflite")]
fn tflite_variant(split: &[(Vec<u8>, usize)]) -> Option<(&'static str, usize)> {
    let opts = litert_options()?;
    let name = "digits-int8-tflite";
    Some((name, correct(name, &opts, split)))
}

#[cfg(not(feature = "tflite"))]
fn tflite_variant(_split: &[(Vec<u8>, usize)]) -> Option<(&'static str, usize)> {
    eprintln!("digits-int8-tflite: built without the `tflite` feature; not measured");
    None
}

#[test]
fn digits_heldout_accuracy_int8_within_one_point_of_fp32() {
    let split = heldout();
    let n = split.len();
    let opts = LoadOptions::default(); // one thread, default library lookup

    let fp32 = correct("digits-fp32", &opts, &split);
    assert!(
        fp32 * 100 >= 95 * n,
        "digits-fp32: held-out top-1 {fp32}/{n} is below 95 %"
    );

    let onnx_int8 = ["digits-int8-qdq", "digits-int8-qoperator"]
        .map(|name| (name, correct(name, &opts, &split)));
    let int8 = onnx_int8.into_iter().chain(tflite_variant(&split));

    // |int8 - fp32| <= 1 percentage point, in whole samples: diff / n <= 1 / 100.
    for (name, ok) in int8 {
        let diff = ok.abs_diff(fp32);
        assert!(
            diff * 100 <= n,
            "{name}: held-out top-1 {ok}/{n} vs digits-fp32 {fp32}/{n}: {:.2} points apart (limit 1)",
            diff as f64 * 100.0 / n as f64
        );
    }
}
