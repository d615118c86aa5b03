//! Shared helpers for integration tests: run the real binary, copy and tamper with
//! bundled packages in temporary directories.
#![allow(dead_code)]

pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The LiteRT library fetched by cross/fetch-litert.sh, unless $BELTBOX_LITERT_LIB says otherwise.
pub fn tflite_library() -> Option<PathBuf> {
    if std::env::var_os("BELTBOX_LITERT_LIB").is_some() {
        return None;
    }
    let lib = repo()
        .join(".cache/litert")
        .join(std::env::consts::ARCH)
        .join("libLiteRt.so");
    lib.exists().then_some(lib)
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn models() -> PathBuf {
    repo().join("models")
}

pub fn beltbox(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beltbox"));
    cmd.args(args).current_dir(repo()).env("RUST_LOG", "warn");
    // The LiteRT library fetched by cross/fetch-litert.sh, for `--features tflite` builds.
    let lib = repo()
        .join(".cache/litert")
        .join(std::env::consts::ARCH)
        .join("libLiteRt.so");
    if std::env::var_os("BELTBOX_LITERT_LIB").is_none() && lib.exists() {
        cmd.env("BELTBOX_LITERT_LIB", lib);
    }
    cmd.output().expect("run beltbox")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "beltbox failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", stdout(o)))
}

/// Copies a bundled package into a fresh temp dir; returns (guard, package path).
pub fn copy_package(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    copy_dir(&models().join(name), &dst);
    (tmp, dst)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Rewrites the sha256 recorded for `rel` so a deliberately modified file passes the
/// hash check and reaches the next line of defence.
pub fn rehash(pkg: &Path, rel: &str) {
    use sha2::Digest;
    let bytes = std::fs::read(pkg.join(rel)).unwrap();
    let new: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let manifest = pkg.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let key = format!("\"{rel}\" = \"");
    let start = text.find(&key).unwrap() + key.len();
    let text = format!("{}{}{}", &text[..start], new, &text[start + 64..]);
    std::fs::write(manifest, text).unwrap();
}

pub fn edit_manifest(pkg: &Path, f: impl FnOnce(String) -> String) {
    let p = pkg.join("manifest.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, f(text)).unwrap();
}

/// (input path relative to the package, label) of every golden sample of a bundled package.
pub fn golden_samples(pkg: &str) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(models().join(pkg).join("manifest.toml")).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["golden"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["input"].as_str().unwrap().to_string(),
                s["label"].as_integer().unwrap() as u64,
            )
        })
        .collect()
}
