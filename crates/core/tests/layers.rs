//! The module order of `beltbox-core` (its lib.rs lists it): a module may use the modules
//! before it and never one after it. Cargo enforces the order between crates; this test
//! enforces it inside the crate, by reading every source file's `crate::` paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lowest first; modules on one rank may use each other (none does today).
const ORDER: &[&[&str]] = &[
    &["tensor", "timing", "stats", "prom"],
    &["cpu", "procfs"],
    &["npy", "image"],
    &["manifest"],
    &["preprocess", "postprocess", "detect"],
    &["frames"],
    &["board"],
    &["memory"],
    &["model"],
    &["thermal"],
];

fn rank(module: &str) -> Option<usize> {
    ORDER.iter().position(|r| r.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`src/model/tflite/mod.rs` -> `model`).
fn owner(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Every `crate::NAME` in code (comments skipped), with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_module_uses_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut violations = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for f in &files {
        let Some(me) = owner(&src, f) else { continue };
        if me == "lib" {
            continue;
        }
        let Some(my_rank) = rank(&me) else {
            violations.push(format!("{}: module `{me}` is not in ORDER", f.display()));
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read source");
        for (line, used) in crate_paths(&text) {
            *seen.entry(me.clone()).or_default() += 1;
            match rank(&used) {
                Some(r) if r <= my_rank => {}
                Some(_) => violations.push(format!(
                    "{}:{line}: `{me}` uses `crate::{used}`, which sits above it",
                    f.display()
                )),
                None => violations.push(format!(
                    "{}:{line}: `crate::{used}` is not a module in ORDER",
                    f.display()
                )),
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // The scan must see real imports, or it proves nothing.
    assert!(seen.get("model").copied().unwrap_or(0) > 5, "{seen:?}");
}

#[test]
fn the_scanner_sees_an_upward_import() {
    let found = crate_paths("use crate::thermal::Governor; // crate::ignored\nlet x = 1;");
    assert_eq!(found, vec![(1, "thermal".to_string())]);
}
