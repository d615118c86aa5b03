//! The PGM and PNG decoders, and the header peek the service reserves memory from: a
//! decoded image must agree with what the peek promised.
#![no_main]

use beltbox_core::image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let peek = image::peek(data);
    let decoded = if image::is_png(data) {
        image::decode_png(data)
    } else {
        image::decode_pgm(data)
    };
    if let (Ok(img), Some(p)) = (decoded, peek) {
        assert_eq!(
            (img.width, img.height),
            (p.width, p.height),
            "peek disagrees with decode"
        );
        assert_eq!(
            img.channels, p.channels,
            "peek disagrees with decode on channels"
        );
    }
});
