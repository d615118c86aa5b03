//! Drives the real `beltbox` binary on the bundled packages: classification results,
//! bench JSON, and every class of bad input (exit code 2, one sentence naming the culprit).

mod common;
use common::*;

const DIGITS_ONNX: [&str; 3] = ["digits-fp32", "digits-int8-qdq", "digits-int8-qoperator"];

fn infer_label(pkg: &str, input: &str) -> (u64, serde_json::Value) {
    let model = format!("models/{pkg}");
    let input = format!("models/{pkg}/{input}");
    let v = json(&beltbox(&[
        "infer", "--model", &model, "--input", &input, "--json",
    ]));
    (v["top"][0]["index"].as_u64().unwrap(), v)
}

#[test]
fn infer_classifies_every_digits_golden_sample() {
    for pkg in DIGITS_ONNX {
        let samples = golden_samples(pkg);
        assert!(samples.len() >= 4, "{pkg}: too few golden samples");
        for (input, label) in samples {
            let (top1, v) = infer_label(pkg, &input);
            assert_eq!(top1, label, "{pkg} {input}: {v}");
            assert_eq!(v["model"], pkg);
            assert_eq!(v["version"], "1.0.0");
            let p = v["top"][0]["score"].as_f64().unwrap();
            assert!(p > 0.5 && p <= 1.0, "{pkg} {input}: top-1 probability {p}");
            assert!(v["timings_ms"]["inference"].as_f64().unwrap() > 0.0);
        }
    }
}

#[cfg(feature = "tflite")]
#[test]
fn infer_classifies_every_tflite_golden_sample_and_benches() {
    let pkg = "digits-int8-tflite";
    for (input, label) in golden_samples(pkg) {
        let (top1, v) = infer_label(pkg, &input);
        assert_eq!(top1, label, "{pkg} {input}: {v}");
        assert_eq!(v["backend"], "litert");
    }
    let v = json(&beltbox(&[
        "bench", "--model", pkg, "--runs", "20", "--json",
    ]));
    assert!(v["p95_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["format"], "tflite");
}

#[test]
fn infer_accepts_bundled_names_and_text_output() {
    let o = beltbox(&[
        "infer",
        "--model",
        "digits-int8-qdq",
        "--input",
        "models/digits-int8-qdq/golden/003.pgm",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("digits-int8-qdq 1.0.0"), "{out}");
    assert!(out.contains("(class 3)"), "{out}");
}

#[test]
fn bench_json_on_digits() {
    for pkg in DIGITS_ONNX {
        let v = json(&beltbox(&[
            "bench",
            "--model",
            &format!("models/{pkg}"),
            "--runs",
            "20",
            "--json",
        ]));
        for key in ["load_ms", "p50_ms", "p95_ms", "p99_ms"] {
            assert!(v[key].as_f64().unwrap() > 0.0, "{pkg}: {key} in {v}");
        }
        assert!(v["p50_ms"].as_f64() <= v["p95_ms"].as_f64());
        assert!(v["p95_ms"].as_f64() <= v["p99_ms"].as_f64());
        assert!(v["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
        assert_eq!(v["runs"], 20);
        assert_eq!(v["backend"], "tract");
        for stage in ["preprocess", "inference", "postprocess", "total"] {
            assert!(v["stages"][stage]["p50_ms"].as_f64().is_some(), "{stage}");
        }
    }
}

#[test]
fn bench_json_on_mobilenet_variants() {
    for pkg in [
        "mobilenetv2-bench-fp32",
        "mobilenetv2-bench-int8-qdq",
        "mobilenetv2-bench-int8-qoperator",
    ] {
        let v = json(&beltbox(&[
            "bench", "--model", pkg, "--runs", "2", "--warmup", "0", "--json",
        ]));
        assert!(v["p50_ms"].as_f64().unwrap() > 0.0, "{pkg}: {v}");
        assert_eq!(v["precision"], pkg.trim_start_matches("mobilenetv2-bench-"));
        let (integer, float) = (
            v["op_counts"]["integer"].as_u64().unwrap(),
            v["op_counts"]["float"].as_u64().unwrap(),
        );
        if pkg.ends_with("fp32") {
            assert_eq!(integer, 0, "{pkg}: {v}");
        } else {
            // Both INT8 forms run on the integer path: 52 convolutions, 10 adds, the pool...
            // Float is left only at the edges (input quantise, output dequantise, QGemm's
            // requantisation).
            assert!(integer >= 70 && float <= 12, "{pkg}: {}", v["op_counts"]);
        }
    }
    // --profile attributes the time to op types, slowest first.
    let v = json(&beltbox(&[
        "bench",
        "--model",
        "mobilenetv2-bench-int8-qdq",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--profile",
        "2",
        "--json",
    ]));
    let profile = v["profile"].as_array().unwrap();
    assert_eq!(profile[0]["op"], "BeltboxQConv", "{}", v["profile"]);
    assert_eq!(profile[0]["nodes"], 52);
    let share: f64 = profile.iter().map(|p| p["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-6, "{share}");
}

fn assert_input_error(o: &std::process::Output, needles: &[&str]) {
    assert_error(o, 2, needles)
}

fn assert_error(o: &std::process::Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "expected exit {code}, stderr: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr does not name `{n}`: {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "not one sentence: {err}");
}

#[test]
fn hash_mismatch_is_refused() {
    let (_t, pkg) = copy_package("digits-int8-qdq");
    let mut bytes = std::fs::read(pkg.join("model.onnx")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(pkg.join("model.onnx"), bytes).unwrap();
    let o = beltbox(&[
        "infer",
        "--model",
        pkg.to_str().unwrap(),
        "--input",
        "models/digits-int8-qdq/golden/000.pgm",
    ]);
    assert_input_error(&o, &["model.onnx", "sha256 mismatch"]);
}

/// A listed file the load itself never reads is still verified (streamed) before the model
/// is admitted: a package is whole or refused.
#[test]
fn tampered_file_the_load_never_reads_is_refused() {
    let (_t, pkg) = copy_package("digits-int8-qdq");
    std::fs::write(pkg.join("notes.txt"), "calibration notes\n").unwrap();
    edit_manifest(&pkg, |t| {
        t.replacen(
            "[files]\n",
            &format!("[files]\n\"notes.txt\" = \"{}\"\n", "0".repeat(64)),
            1,
        )
    });
    let infer = || {
        beltbox(&[
            "infer",
            "--model",
            pkg.to_str().unwrap(),
            "--input",
            "models/digits-int8-qdq/golden/000.pgm",
        ])
    };
    assert_input_error(&infer(), &["notes.txt", "sha256 mismatch"]);
    // With the right hash the same package loads: the refusal was the hash, not the file.
    rehash(&pkg, "notes.txt");
    let o = infer();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A listed file that is missing is named before any model is built.
#[test]
fn missing_listed_file_is_refused_before_the_build() {
    let (_t, pkg) = copy_package("digits-int8-qdq");
    std::fs::remove_file(pkg.join("labels.txt")).unwrap();
    let o = beltbox(&["plan", "--model", pkg.to_str().unwrap()]);
    assert_input_error(&o, &["labels.txt"]);
}

#[test]
fn truncated_model_is_refused() {
    let (_t, pkg) = copy_package("digits-int8-qoperator");
    let bytes = std::fs::read(pkg.join("model.onnx")).unwrap();
    std::fs::write(pkg.join("model.onnx"), &bytes[..bytes.len() / 3]).unwrap();
    rehash(&pkg, "model.onnx");
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert_input_error(&o, &["model.onnx", "cannot parse the ONNX model"]);
}

#[test]
fn garbage_model_is_refused() {
    let (_t, pkg) = copy_package("digits-fp32");
    std::fs::write(
        pkg.join("model.onnx"),
        b"this is not a protobuf, it is a text file\n",
    )
    .unwrap();
    rehash(&pkg, "model.onnx");
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert_input_error(&o, &["model.onnx"]);
}

#[test]
fn unknown_manifest_key_is_named() {
    let (_t, pkg) = copy_package("digits-fp32");
    edit_manifest(&pkg, |t| {
        t.replace("[budgets]\n", "[budgets]\nram_gib = 1\n")
    });
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert_input_error(&o, &["manifest.toml", "ram_gib"]);
}

#[test]
fn missing_manifest_key_is_named() {
    let (_t, pkg) = copy_package("digits-fp32");
    edit_manifest(&pkg, |t| t.replace("p95_ms = ", "p95_msec = "));
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert_input_error(&o, &["manifest.toml", "p95_ms"]);
}

#[test]
fn wrong_manifest_shape_is_named() {
    // Shape that disagrees with the graph: the manifest is internally consistent (resize
    // follows), so it is the graph check that must catch it.
    let (_t, pkg) = copy_package("digits-int8-qdq");
    edit_manifest(&pkg, |t| {
        t.replace("shape = [1, 1, 8, 8]", "shape = [1, 1, 8, 9]")
            .replace("resize = [8, 8]", "resize = [8, 9]")
    });
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert_input_error(&o, &["model.onnx"]);
    // Shape inconsistent with the preprocessing: caught by manifest validation.
    let (_t2, pkg2) = copy_package("digits-int8-qdq");
    edit_manifest(&pkg2, |t| {
        t.replace("shape = [1, 1, 8, 8]", "shape = [1, 1, 16, 16]")
    });
    let o = beltbox(&["bench", "--model", pkg2.to_str().unwrap(), "--runs", "1"]);
    assert_input_error(&o, &["manifest.toml", "input.preprocess.resize"]);
}

#[test]
fn wrong_output_name_is_named() {
    let (_t, pkg) = copy_package("digits-fp32");
    edit_manifest(&pkg, |t| {
        t.replacen("name = \"logits\"", "name = \"probs\"", 1)
    });
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert_input_error(&o, &["outputs[0].name", "probs", "logits"]);
}

#[test]
fn missing_file_is_named() {
    let (_t, pkg) = copy_package("digits-fp32");
    std::fs::remove_file(pkg.join("golden/002.out.npy")).unwrap();
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert_input_error(&o, &["golden/002.out.npy"]);
}

#[test]
fn missing_package_and_input_are_named() {
    let o = beltbox(&["infer", "--model", "no-such-model", "--input", "x.pgm"]);
    assert_input_error(&o, &["no-such-model"]);
    let o = beltbox(&[
        "infer",
        "--model",
        "digits-fp32",
        "--input",
        "/nonexistent/frame.png",
    ]);
    assert_input_error(&o, &["/nonexistent/frame.png"]);
}

#[test]
fn bad_inputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "frame.gif",
            b"GIF89a....".to_vec(),
            "unrecognised input format",
        ),
        ("trunc.pgm", b"P5 8 8 16\n\x01\x02".to_vec(), "truncated"),
        ("short.raw", vec![0u8; 17], "needs exactly 256"),
        (
            "badpng.png",
            b"\x89PNG\r\n\x1a\n\x00\x00garbage".to_vec(),
            "PNG",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let o = beltbox(&[
            "infer",
            "--model",
            "digits-fp32",
            "--input",
            p.to_str().unwrap(),
        ]);
        assert_input_error(&o, &[name, needle]);
    }
}

#[test]
fn npy_input_of_wrong_shape_is_refused_and_right_shape_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let wrong = beltbox_core::npy::to_bytes(&beltbox_core::tensor::Tensor::new(
        vec![1, 64],
        beltbox_core::tensor::TensorData::F32(vec![0.0; 64]),
    ));
    let p = tmp.path().join("wrong.npy");
    std::fs::write(&p, wrong).unwrap();
    let o = beltbox(&[
        "infer",
        "--model",
        "digits-fp32",
        "--input",
        p.to_str().unwrap(),
    ]);
    assert_input_error(&o, &["wrong.npy", "[1, 64]", "[1, 1, 8, 8]"]);
}

#[test]
fn tampered_golden_reference_refuses_model() {
    // A reference that the runtime cannot reproduce must refuse the model, even with a
    // valid hash: this is the line of defence against a miscomputing backend. It is a
    // failed check (exit 1), not a usage error.
    let (_t, pkg) = copy_package("digits-int8-qdq");
    let rel = "golden/001.out.npy";
    let mut t = beltbox_core::npy::parse(&std::fs::read(pkg.join(rel)).unwrap()).unwrap();
    if let beltbox_core::tensor::TensorData::F32(v) = &mut t.data {
        v[0] += 5.0;
    }
    std::fs::write(pkg.join(rel), beltbox_core::npy::to_bytes(&t)).unwrap();
    rehash(&pkg, rel);
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert_error(&o, 1, &["golden self-check failed", "golden/001.pgm"]);
}

#[test]
fn usage_errors_exit_2() {
    let o = beltbox(&["bench", "--model", "digits-fp32", "--runs", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = beltbox(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = beltbox(&["infer", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("Examples:"));
}

#[test]
fn under_journald_log_lines_carry_syslog_priorities() {
    // journald reads a `<N>` prefix as the line's priority (sd-daemon(3)); a warning must
    // arrive as priority 4 so `journalctl -p warning` shows it.
    let empty = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_beltbox"))
        .args(["thermal", "--sysfs-root"])
        .arg(empty.path())
        .env("JOURNAL_STREAM", "8:12345")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(
        err.lines()
            .any(|l| l.starts_with("<4>beltbox_core::thermal") && l.contains("no thermal zones")),
        "{err}"
    );
    assert!(!err.contains("[WARN"), "{err}");
}

#[test]
fn infer_output_npy_writes_every_output_as_the_reference_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outs");
    let o = beltbox(&[
        "infer",
        "--model",
        "models/digits-fp32",
        "--input",
        "models/digits-fp32/golden/000.pgm",
        "--output-npy",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let files: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(files.len(), 1, "one file per output");
    let ours = beltbox_core::npy::parse(&std::fs::read(out.join("0_logits.npy")).unwrap())
        .unwrap()
        .to_f32();
    let reference = beltbox_core::npy::parse(
        &std::fs::read(repo().join("models/digits-fp32/golden/000.out.npy")).unwrap(),
    )
    .unwrap()
    .to_f32();
    assert_eq!(ours.len(), reference.len());
    for (a, b) in ours.iter().zip(&reference) {
        assert!((a - b).abs() <= 1e-4, "{a} vs ORT {b}");
    }
}

/// The digits-fp32 manifest rewritten in format 2: `[[inputs]]`, `inputs`/`outputs` lists per
/// golden sample, no `[accuracy]` or `accuracy_floor`.
fn to_format_2(t: String) -> String {
    let mut out = String::new();
    let mut skip = false;
    for line in t.lines() {
        if line.starts_with('[') {
            skip = line == "[accuracy]";
        }
        if skip || line.starts_with("accuracy_floor") {
            continue;
        }
        let line = match line {
            "[input]" => "[[inputs]]".to_string(),
            "[input.preprocess]" => "[inputs.preprocess]".to_string(),
            l if l.starts_with("input = ") => format!("inputs = [{}]", &l[8..]),
            l if l.starts_with("output = ") => format!("outputs = [{}]", &l[9..]),
            l => l.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn format_2_manifest_loads_and_a_raw_output_needs_no_label() {
    let (_t, pkg) = copy_package("digits-fp32");
    edit_manifest(&pkg, to_format_2);
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert!(o.status.success(), "format 2: {}", stderr(&o));
    // A raw output: no scores, no labels, no golden labels; values are still compared.
    edit_manifest(&pkg, |t| {
        t.replace("task = \"classification\"", "task = \"raw\"")
            .lines()
            .filter(|l| {
                !l.starts_with("label = ")
                    && !l.starts_with("scores = ")
                    && !l.starts_with("labels = ")
            })
            .map(|l| format!("{l}\n"))
            .collect()
    });
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert!(o.status.success(), "raw: {}", stderr(&o));
    // Per-output tolerance: a reference 0.05 off fails at the package default and passes
    // once that output allows 0.1.
    let rel = "golden/000.out.npy";
    let mut t = beltbox_core::npy::parse(&std::fs::read(pkg.join(rel)).unwrap()).unwrap();
    if let beltbox_core::tensor::TensorData::F32(v) = &mut t.data {
        v[0] += 0.05;
    }
    std::fs::write(pkg.join(rel), beltbox_core::npy::to_bytes(&t)).unwrap();
    rehash(&pkg, rel);
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert_error(
        &o,
        1,
        &["golden self-check failed", "output `logits`", "1 of 10"],
    );
    edit_manifest(&pkg, |t| {
        t.replace("task = \"raw\"", "task = \"raw\"\natol = 0.1")
    });
    let o = beltbox(&["bench", "--model", pkg.to_str().unwrap(), "--runs", "1"]);
    assert!(o.status.success(), "per-output atol: {}", stderr(&o));
}

#[test]
fn a_tensor_only_input_refuses_an_image_by_name() {
    let (_t, pkg) = copy_package("digits-fp32");
    edit_manifest(&pkg, |t| {
        let start = t.find("[input.preprocess]").unwrap();
        let end = start + t[start..].find("\n\n").unwrap();
        format!("{}{}", &t[..start], &t[end + 2..])
    });
    let npy = tempfile::tempdir().unwrap();
    let img = beltbox_core::image::decode_pgm(
        &std::fs::read(repo().join("models/digits-fp32/golden/000.pgm")).unwrap(),
    )
    .unwrap();
    let x: Vec<f32> = img
        .samples
        .iter()
        .map(|&s| s as f32 / img.maxval as f32)
        .collect();
    let t = beltbox_core::tensor::Tensor::new(
        vec![1, 1, 8, 8],
        beltbox_core::tensor::TensorData::F32(x),
    );
    let path = npy.path().join("x.npy");
    std::fs::write(&path, beltbox_core::npy::to_bytes(&t)).unwrap();
    // Golden inputs are images: the package itself is now refused, naming why.
    let o = beltbox(&[
        "infer",
        "--model",
        pkg.to_str().unwrap(),
        "--input",
        path.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("takes tensors"), "{}", stderr(&o));
}
