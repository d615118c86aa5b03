//! The package manifest parser and its validation (every field, ranges, detection heads).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = beltbox_core::manifest::Manifest::parse(text, std::path::Path::new("fuzz.toml"));
    }
});
