//! Which board are we on? For now: the device-tree model string, for the load log.
//! (Board profiles with thermal and RAM facts come with the thermal work.)

use std::path::Path;

/// The device-tree model (e.g. "Raspberry Pi 4 Model B Rev 1.4"), `BELTBOX_BOARD` if set,
/// or "unknown" (x86 dev machines and QEMU have no device tree model).
pub fn detect() -> String {
    if let Ok(b) = std::env::var("BELTBOX_BOARD") {
        if !b.trim().is_empty() {
            return b.trim().to_string();
        }
    }
    detect_under(Path::new("/"))
}

pub fn detect_under(root: &Path) -> String {
    for rel in [
        "proc/device-tree/model",
        "sys/firmware/devicetree/base/model",
    ] {
        if let Ok(bytes) = std::fs::read(root.join(rel)) {
            // The property is NUL-terminated.
            let s = String::from_utf8_lossy(&bytes)
                .trim_end_matches('\0')
                .trim()
                .to_string();
            if !s.is_empty() {
                return s;
            }
        }
    }
    "unknown".to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_nul_terminated_model() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::detect_under(dir.path()), "unknown");
        let p = dir.path().join("sys/firmware/devicetree/base");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("model"), b"Raspberry Pi 5 Model B Rev 1.0\0").unwrap();
        assert_eq!(
            super::detect_under(dir.path()),
            "Raspberry Pi 5 Model B Rev 1.0"
        );
    }
}
