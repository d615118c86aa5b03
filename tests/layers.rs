//! The service (`src/serve`, the library half of this package) is the product path: it must
//! not reach the measurement tools or the CLI. Cargo cannot say so (the binary beside it
//! depends on `beltbox-tools` for `beltbox bench|soak|loadgen`), so this test reads the
//! service's sources. The order between the crates themselves is Cargo's to enforce, and the
//! order inside `beltbox-core` is checked by `crates/core/tests/layers.rs`.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_service_uses_neither_the_tools_nor_the_cli() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/serve"), &mut files);
    files.push(root.join("src/lib.rs"));
    assert!(files.len() >= 8, "found only {files:?}");
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for forbidden in ["beltbox_tools", "crate::cli", "super::cli"] {
                if code.contains(forbidden) {
                    bad.push(format!("{}:{}: {forbidden}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the service reaches above itself:\n{}",
        bad.join("\n")
    );
}
