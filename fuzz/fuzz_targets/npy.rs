//! The NPY parser (header dictionary, dtypes, shapes, data length).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = beltbox_core::npy::parse(data);
});
