//! `preprocess::working_bytes` is what the service reserves before it preprocesses a
//! request tensor: it must bound what preprocessing really allocates. Measured here with
//! the counting allocator (installed for this test binary alone) on frames of camera
//! sizes, every image route (UINT8 tensor, PNG, PGM) and both resize modes.

use beltbox_core::manifest::InputSpec;
use beltbox_core::memory::alloc::{self, CountingAlloc};
use beltbox_core::preprocess::{self, Elements};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn spec(shape: [usize; 4], layout: &str, color: &str, mode: &str) -> InputSpec {
    let (h, w, c) = match layout {
        "nchw" => (shape[2], shape[3], shape[1]),
        _ => (shape[1], shape[2], shape[3]),
    };
    let ones = vec![1.0; c];
    let text = format!(
        "name = \"x\"\nshape = {shape:?}\ndtype = \"float32\"\nlayout = \"{layout}\"\n\
         [preprocess]\nresize = [{h}, {w}]\nresize_mode = \"{mode}\"\ncolor = \"{color}\"\n\
         scale = 1.0\nmean = {ones:?}\nstd = {ones:?}\n"
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Heap high-water mark above the current heap while `f` runs.
fn peak_of(f: impl FnOnce()) -> u64 {
    alloc::peak_during(f) as u64
}

fn png(w: u32, h: u32, rgb: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let ch = if rgb { 3 } else { 1 };
    let mut e = png::Encoder::new(&mut out, w, h);
    e.set_color(if rgb {
        png::ColorType::Rgb
    } else {
        png::ColorType::Grayscale
    });
    e.set_depth(png::BitDepth::Eight);
    let mut wr = e.write_header().unwrap();
    let px: Vec<u8> = (0..w * h * ch).map(|i| (i % 251) as u8).collect();
    wr.write_image_data(&px).unwrap();
    drop(wr);
    out
}

#[test]
fn working_bytes_bounds_what_preprocessing_allocates() {
    alloc::mark_installed();
    let specs = [
        spec([1, 3, 224, 224], "nchw", "rgb", "stretch"),
        spec([1, 224, 224, 3], "nhwc", "bgr", "letterbox"),
        spec([1, 1, 8, 8], "nchw", "gray", "stretch"),
        spec([1, 3, 64, 64], "nchw", "rgb", "letterbox"),
    ];
    let frames: [(usize, usize, usize); 5] = [
        (720, 1280, 3),
        (1080, 1920, 3),
        (480, 640, 1),
        (224, 224, 3),
        (8, 8, 1),
    ];
    for s in &specs {
        for &(h, w, c) in &frames {
            let shape = vec![h, w, c];
            let data = Elements::U8((0..h * w * c).map(|i| (i % 251) as u8).collect());
            let bound = preprocess::working_bytes(&shape, &data, s);
            let used = peak_of(|| {
                preprocess::from_elements(&shape, data, s).unwrap();
            });
            assert!(
                used <= bound,
                "UINT8 {shape:?} into {:?}: used {used} > bound {bound}",
                s.shape
            );
            // The bound is meant to be tight enough to admit camera frames: within 2x.
            assert!(
                bound <= 2 * used + 64 * 1024,
                "UINT8 {shape:?} into {:?}: bound {bound} is loose (used {used})",
                s.shape
            );
        }
        for (w, h, rgb) in [
            (1920, 1080, true),
            (1280, 720, true),
            (640, 480, false),
            (8, 8, false),
        ] {
            let file = png(w, h, rgb);
            let data = Elements::Bytes(vec![file]);
            let bound = preprocess::working_bytes(&[1], &data, s);
            let used = peak_of(|| {
                preprocess::from_elements(&[1], data, s).unwrap();
            });
            assert!(used <= bound, "PNG {w}x{h}: used {used} > bound {bound}");
        }
        let pgm = {
            let mut f = b"P5\n320 240\n255\n".to_vec();
            f.extend((0..320 * 240).map(|i| (i % 256) as u8));
            f
        };
        let data = Elements::Bytes(vec![pgm]);
        let bound = preprocess::working_bytes(&[1], &data, s);
        let used = peak_of(|| {
            preprocess::from_elements(&[1], data, s).unwrap();
        });
        assert!(used <= bound, "PGM: used {used} > bound {bound}");
    }
}
