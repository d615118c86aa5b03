//! TFLite backend against the real runtime library and the `digits-int8-tflite` package.
//!
//! Needs the LiteRT library: `cross/fetch-litert.sh` puts it in
//! `.cache/litert/<arch>/libLiteRt.so`, which these tests use when `BELTBOX_LITERT_LIB` is unset.
#![cfg(feature = "tflite")]

use std::path::{Path, PathBuf};
use std::sync::Once;

use beltbox_core::model::tflite::{
    default_library_names, CpuKernels, LoadOptions, TfliteBackend, TfliteError, LIBRARY_ENV,
};
use beltbox_core::tensor::{DType, QuantParams, Tensor, TensorData};

const PACKAGE: &str = "models/digits-int8-tflite";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fetched_litert() -> PathBuf {
    repo()
        .join(".cache/litert")
        .join(std::env::consts::ARCH)
        .join("libLiteRt.so")
}

/// Points `BELTBOX_LITERT_LIB` at the fetched library unless the caller set it. Every test calls
/// this first: the `Once` makes all of them wait until the variable is set, so it is never
/// written while another test thread may read the environment.
fn setup() -> PathBuf {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os(LIBRARY_ENV).is_none() {
            std::env::set_var(LIBRARY_ENV, fetched_litert());
        }
    });
    let lib = PathBuf::from(std::env::var_os(LIBRARY_ENV).unwrap_or_default());
    assert!(
        lib.is_file(),
        "LiteRT library {} missing: run cross/fetch-litert.sh (or set {LIBRARY_ENV})",
        lib.display()
    );
    lib
}

fn model_path() -> PathBuf {
    repo().join(PACKAGE).join("model.tflite")
}

struct Sample {
    input: PathBuf,
    output: PathBuf,
    label: usize,
}

fn golden_samples() -> Vec<Sample> {
    let dir = repo().join(PACKAGE);
    let text = std::fs::read_to_string(dir.join("manifest.toml")).expect("manifest.toml");
    let manifest: toml::Value = toml::from_str(&text).expect("manifest parses");
    let samples = manifest["golden"]["samples"]
        .as_array()
        .expect("[[golden.samples]]");
    samples
        .iter()
        .map(|s| Sample {
            input: dir.join(s["input"].as_str().expect("input")),
            output: dir.join(s["output"].as_str().expect("output")),
            label: usize::try_from(s["label"].as_integer().expect("label")).expect("label >= 0"),
        })
        .collect()
}

/// Binary PGM (P5, maxval < 256): (width, height, maxval, pixels).
fn read_pgm(path: &Path) -> (usize, usize, u32, Vec<u8>) {
    let bytes = std::fs::read(path).expect("read pgm");
    let mut pos = 0;
    let mut fields = Vec::new();
    while fields.len() < 4 {
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if bytes.get(pos) == Some(&b'#') {
            while pos < bytes.len() && bytes[pos] != b'\n' {
                pos += 1;
            }
            continue;
        }
        let start = pos;
        while pos < bytes.len() && !bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        assert!(pos > start, "{}: truncated PGM header", path.display());
        fields.push(String::from_utf8_lossy(&bytes[start..pos]).into_owned());
    }
    pos += 1; // the single whitespace byte after maxval
    assert_eq!(fields[0], "P5", "{}: not a binary PGM", path.display());
    let w: usize = fields[1].parse().expect("width");
    let h: usize = fields[2].parse().expect("height");
    let maxval: u32 = fields[3].parse().expect("maxval");
    assert!(maxval > 0 && maxval < 256, "16-bit PGM not supported here");
    let pixels = bytes[pos..].to_vec();
    assert_eq!(pixels.len(), w * h, "{}: pixel count", path.display());
    (w, h, maxval, pixels)
}

/// Minimal `.npy` reader for little int8 arrays (format 1.0/2.0, C order): (shape, data).
fn read_npy_i8(path: &Path) -> (Vec<usize>, Vec<i8>) {
    let bytes = std::fs::read(path).expect("read npy");
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not an npy file",
        path.display()
    );
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => panic!("{}: npy version {v} unsupported", path.display()),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("ascii header");
    assert!(
        header.contains("'descr': '|i1'"),
        "{}: not int8: {header}",
        path.display()
    );
    assert!(
        header.contains("'fortran_order': False"),
        "{}: fortran order: {header}",
        path.display()
    );
    let shape_start = header.find("'shape': (").expect("shape") + "'shape': (".len();
    let shape_end = shape_start + header[shape_start..].find(')').expect("shape end");
    let shape: Vec<usize> = header[shape_start..shape_end]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("dim"))
        .collect();
    let data: Vec<i8> = bytes[start + header_len..]
        .iter()
        .map(|&b| b as i8)
        .collect();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{}: data length",
        path.display()
    );
    (shape, data)
}

/// x = pixel / maxval, q = clamp(round_half_even(x / scale) + zero_point, -128, 127).
fn quantize_image(pixels: &[u8], maxval: u32, q: QuantParams) -> Vec<i8> {
    pixels
        .iter()
        .map(|&p| {
            let x = f32::from(p) / maxval as f32;
            let v = (x / q.scale).round_ties_even() + q.zero_point as f32;
            v.clamp(-128.0, 127.0) as i8
        })
        .collect()
}

fn argmax(v: &[i8]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn input_tensor(model: &TfliteBackend, sample: &Sample) -> Tensor {
    let (name, shape, dtype, quant) = model.input_info().remove(0);
    assert_eq!(dtype, DType::Int8, "input {name}");
    let q = quant.expect("int8 input has quantisation parameters");
    let (w, h, maxval, pixels) = read_pgm(&sample.input);
    assert_eq!(shape, vec![1, h, w, 1], "input {name} shape (NHWC)");
    let mut t = Tensor::new(shape, TensorData::I8(quantize_image(&pixels, maxval, q)));
    t.quant = Some(q);
    t
}

fn load() -> TfliteBackend {
    setup();
    TfliteBackend::load(&model_path(), 1).expect("load digits-int8-tflite")
}

#[test]
fn model_io_matches_the_package() {
    let model = load();
    let version = model.runtime_version();
    eprintln!("runtime: {version}");
    assert!(version.contains("LiteRT"), "{version}");
    assert!(version.contains("libLiteRt.so"), "{version}");

    let inputs = model.input_info();
    assert_eq!(inputs.len(), 1);
    let (name, shape, dtype, quant) = &inputs[0];
    assert_eq!(name, "serving_default_input:0");
    assert_eq!(shape, &vec![1, 8, 8, 1]);
    assert_eq!(*dtype, DType::Int8);
    let q = quant.expect("input quant");
    assert!((q.scale - 1.0 / 255.0).abs() < 1e-6, "{q:?}");
    assert_eq!(q.zero_point, -128);

    let outputs = model.output_info();
    assert_eq!(outputs.len(), 1);
    let (name, shape, dtype, quant) = &outputs[0];
    assert_eq!(name, "StatefulPartitionedCall_1:0");
    assert_eq!(shape, &vec![1, 10]);
    assert_eq!(*dtype, DType::Int8);
    assert!(quant.is_some());
}

/// Runs every golden sample; returns how many outputs were bit-identical to the reference.
/// Asserts |ours - reference| <= 1 step and top-1 == label == reference top-1.
fn check_golden(model: &TfliteBackend) -> (usize, usize) {
    let samples = golden_samples();
    assert!(!samples.is_empty());
    let mut exact = 0;
    for s in &samples {
        let out = model.run(&input_tensor(model, s)).expect("run");
        assert_eq!(out.len(), 1);
        let got = &out[0];
        assert_eq!(got.shape, vec![1, 10]);
        assert!(got.quant.is_some(), "int8 output carries quant params");
        let TensorData::I8(got) = &got.data else {
            panic!("output is not int8: {:?}", got.dtype());
        };
        let (shape, want) = read_npy_i8(&s.output);
        assert_eq!(shape, vec![1, 10]);
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (i16::from(a) - i16::from(b)).abs())
            .max()
            .unwrap_or(0);
        assert!(
            max_diff <= 1,
            "{}: outputs differ by up to {max_diff}:\n  ours {got:?}\n  ref  {want:?}",
            s.input.display()
        );
        if max_diff == 0 {
            exact += 1;
        }
        assert_eq!(argmax(got), s.label, "{}: top-1", s.input.display());
        assert_eq!(
            argmax(got),
            argmax(&want),
            "{}: top-1 vs ref",
            s.input.display()
        );
    }
    (exact, samples.len())
}

#[test]
fn golden_outputs_match_reference() {
    // Default kernels (XNNPACK): within one output step of the reference-kernel goldens.
    let model = load();
    let (exact, n) = check_golden(&model);
    eprintln!("default kernels: {exact}/{n} golden outputs bit-identical, all within 1 step");
}

#[test]
fn reference_kernels_are_bit_exact() {
    setup();
    let model = TfliteBackend::load_with_options(
        &model_path(),
        &LoadOptions {
            threads: 1,
            kernels: Some(CpuKernels::Reference),
            ..LoadOptions::default()
        },
    )
    .expect("load with reference kernels");
    assert!(model.runtime_version().contains("kernels reference"));
    let (exact, n) = check_golden(&model);
    assert_eq!(
        exact, n,
        "reference kernels must reproduce BUILTIN_REF goldens exactly"
    );
}

#[test]
fn threads_and_concurrent_runs_agree() {
    let one = load();
    let two = TfliteBackend::load(&model_path(), 2).expect("load with 2 threads");
    assert!(two.runtime_version().contains("2 thread"));
    let samples = golden_samples();
    let inputs: Vec<Tensor> = samples.iter().map(|s| input_tensor(&one, s)).collect();
    let reference: Vec<Vec<Tensor>> = inputs.iter().map(|t| one.run(t).expect("run")).collect();
    // The model is Sync: hammer one instance from several threads.
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                for _ in 0..5 {
                    for (t, want) in inputs.iter().zip(&reference) {
                        assert_eq!(&two.run(t).expect("run"), want);
                    }
                }
            });
        }
    });
}

#[test]
fn wrong_inputs_are_errors_not_panics() {
    let model = load();
    let s = &golden_samples()[0];
    let good = input_tensor(&model, s);

    let wrong_shape = Tensor::new(vec![1, 64], good.data.clone());
    match model.run(&wrong_shape) {
        Err(TfliteError::InputMismatch {
            what: "shape",
            expected,
            got,
            ..
        }) => {
            assert_eq!(expected, "[1, 8, 8, 1]");
            assert_eq!(got, "[1, 64]");
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }

    let wrong_dtype = Tensor::new(vec![1, 8, 8, 1], TensorData::F32(vec![0.0; 64]));
    let e = model.run(&wrong_dtype).expect_err("float into int8 model");
    let msg = e.to_string();
    assert!(msg.contains("int8") && msg.contains("float32"), "{msg}");

    let short = Tensor::new(vec![1, 8, 8, 1], TensorData::I8(vec![0; 10]));
    assert!(matches!(
        model.run(&short),
        Err(TfliteError::InputMismatch { .. })
    ));

    let mut wrong_quant = good.clone();
    wrong_quant.quant = Some(QuantParams {
        scale: 1.0,
        zero_point: 0,
    });
    assert!(matches!(
        model.run(&wrong_quant),
        Err(TfliteError::InputMismatch {
            what: "quantization",
            ..
        })
    ));

    assert!(matches!(
        model.run_inputs(&[good.clone(), good.clone()]),
        Err(TfliteError::InputCount {
            expected: 1,
            got: 2
        })
    ));
    // The model still works after the rejected calls.
    assert!(model.run(&good).is_ok());
}

#[test]
fn missing_library_is_library_not_found() {
    setup();
    let missing = Path::new("/nonexistent/beltbox/libLiteRt.so");
    match TfliteBackend::load_with_library(missing, &model_path(), 1) {
        Err(TfliteError::LibraryNotFound { searched, .. }) => {
            assert_eq!(searched, vec![missing.to_path_buf()]);
        }
        other => panic!("expected LibraryNotFound, got {other:?}"),
    }
    let e = TfliteBackend::load_with_library(missing, &model_path(), 1).expect_err("missing");
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/beltbox/libLiteRt.so"), "{msg}");
    assert!(msg.contains("fetch-litert.sh"), "{msg}");
}

#[test]
fn non_runtime_library_is_rejected() {
    setup();
    // A real shared library that is not a TFLite runtime, built for the architecture under
    // test: under qemu-user the x86_64 host's libm "exists" too, but cannot be loaded.
    let arch = std::env::consts::ARCH;
    let candidates = [
        format!("/lib/{arch}-linux-gnu/libm.so.6"),
        // Debian's cross sysroot (qemu-user -L /usr/aarch64-linux-gnu) has no multiarch dir.
        "/lib/libm.so.6".to_string(),
    ];
    let libm = candidates.iter().map(Path::new).find(|p| p.exists());
    let Some(libm) = libm else {
        eprintln!("no libm.so.6 at the Debian paths; skipped");
        return;
    };
    let e = TfliteBackend::load_with_library(libm, &model_path(), 1).expect_err("libm");
    assert!(matches!(e, TfliteError::UnsupportedLibrary { .. }), "{e:?}");
    // A file that is not a shared object at all.
    let e = TfliteBackend::load_with_library(&model_path(), &model_path(), 1).expect_err("tflite");
    assert!(matches!(e, TfliteError::LibraryLoad { .. }), "{e:?}");
}

/// Run in a child process with `BELTBOX_LITERT_LIB` removed (see
/// `default_lookup_names_the_searched_paths`).
#[test]
#[ignore = "helper: run by default_lookup_names_the_searched_paths in a child process"]
fn lookup_probe() {
    match TfliteBackend::load(&model_path(), 1) {
        Ok(m) => println!("PROBE-FOUND {}", m.library_path().display()),
        Err(TfliteError::LibraryNotFound { searched, .. }) => {
            for p in searched {
                println!("PROBE-SEARCHED {}", p.display());
            }
        }
        Err(e) => println!("PROBE-ERROR {e}"),
    }
}

#[test]
fn default_lookup_names_the_searched_paths() {
    setup();
    let exe = std::env::current_exe().expect("current_exe");
    let out = std::process::Command::new(&exe)
        .args(["--exact", "lookup_probe", "--ignored", "--nocapture"])
        .env_remove(LIBRARY_ENV)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "probe failed: {stdout}");
    if let Some(line) = stdout.lines().find(|l| l.starts_with("PROBE-FOUND")) {
        eprintln!("a system-wide library exists ({line}); order not checked");
        return;
    }
    let searched: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PROBE-SEARCHED "))
        .collect();
    let exe_dir = exe.parent().expect("exe dir");
    let names = default_library_names();
    let mut expected: Vec<String> = Vec::new();
    expected.extend(names.iter().map(|n| exe_dir.join(n).display().to_string()));
    expected.extend(names.iter().map(|n| format!("/usr/lib/beltbox/{n}")));
    expected.extend(names.iter().map(|n| n.to_string()));
    assert_eq!(searched, expected, "stdout: {stdout}");
    assert_eq!(names[0], "libLiteRt.so");

    // An explicit BELTBOX_LITERT_LIB is authoritative: no fallback when it is wrong.
    let out = std::process::Command::new(&exe)
        .args(["--exact", "lookup_probe", "--ignored", "--nocapture"])
        .env(LIBRARY_ENV, "/nonexistent/libLiteRt.so")
        .output()
        .expect("run probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let searched: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PROBE-SEARCHED "))
        .collect();
    assert_eq!(searched, vec!["/nonexistent/libLiteRt.so"], "{stdout}");
}

#[test]
fn garbage_model_is_model_load_error() {
    setup();
    let dir = tempfile::tempdir().expect("tempdir");

    let garbage = dir.path().join("garbage.tflite");
    std::fs::write(&garbage, b"this is not a flatbuffer at all, just text\n").expect("write");
    let e = TfliteBackend::load(&garbage, 1).expect_err("garbage");
    assert!(
        matches!(&e, TfliteError::ModelLoad { path, .. } if path == &garbage),
        "{e:?}"
    );

    // Right FlatBuffer identifier, garbage body: gets past our header check, so this is
    // LiteRT's own verifier refusing it.
    let mut fake = vec![0u8; 256];
    fake[..4].copy_from_slice(&200u32.to_le_bytes());
    fake[4..8].copy_from_slice(b"TFL3");
    for (i, b) in fake.iter_mut().enumerate().skip(8) {
        *b = (i * 37 % 251) as u8;
    }
    let fake_path = dir.path().join("fake.tflite");
    std::fs::write(&fake_path, &fake).expect("write");
    let e = TfliteBackend::load(&fake_path, 1).expect_err("fake flatbuffer");
    assert!(matches!(e, TfliteError::ModelLoad { .. }), "{e:?}");

    // Truncated real model.
    let real = std::fs::read(model_path()).expect("model");
    let cut = dir.path().join("cut.tflite");
    std::fs::write(&cut, &real[..real.len() / 2]).expect("write");
    let e = TfliteBackend::load(&cut, 1).expect_err("truncated");
    assert!(matches!(e, TfliteError::ModelLoad { .. }), "{e:?}");

    let e = TfliteBackend::load(&dir.path().join("missing.tflite"), 1).expect_err("missing");
    assert!(matches!(e, TfliteError::ModelLoad { .. }), "{e:?}");
}

/// The TfLite C library that the `tflitec` 0.7 crate ships for docs.rs builds
/// (`build-res/docsrs_res.zip` -> `libtensorflowlite_c.so`, x86_64). Our FFI loads it, but it
/// computes the per-channel INT8 model wrongly: the golden self-check must catch that.
///
/// Library: `$BELTBOX_TFLITEC_LIB`, else `.cache/tflitec/x86_64/libtensorflowlite_c.so`
/// (extract it with `unzip -j <cargo registry>/tflitec-0.7.0/build-res/docsrs_res.zip
/// libtensorflowlite_c.so -d .cache/tflitec/x86_64`). Skipped when absent.
#[cfg(feature = "tflitec")]
#[test]
fn tflitec_lib_miscomputes_and_golden_check_catches_it() {
    setup();
    let lib = std::env::var_os("BELTBOX_TFLITEC_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/tflitec/x86_64/libtensorflowlite_c.so"));
    if !lib.is_file() {
        eprintln!("{} absent; skipped", lib.display());
        return;
    }
    let model =
        TfliteBackend::load_with_library(&lib, &model_path(), 1).expect("load via TfLite C");
    let version = model.runtime_version();
    eprintln!("runtime: {version}");
    assert!(version.contains("TfLite C API"), "{version}");
    assert_eq!(model.input_info(), load().input_info());

    let mut differing = 0;
    let samples = golden_samples();
    for s in &samples {
        let out = model.run(&input_tensor(&model, s)).expect("run");
        let TensorData::I8(got) = &out[0].data else {
            panic!("not int8");
        };
        let (_, want) = read_npy_i8(&s.output);
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (i16::from(a) - i16::from(b)).abs())
            .max()
            .unwrap_or(0);
        eprintln!("{}: max |diff| {max_diff}  ours {got:?}", s.input.display());
        if max_diff > 1 {
            differing += 1;
        }
    }
    assert!(
        differing > 0,
        "the tflitec docs.rs library reproduced the golden outputs: the per-channel bug is gone?"
    );
    eprintln!("{differing}/{} samples off by more than 1", samples.len());
}
