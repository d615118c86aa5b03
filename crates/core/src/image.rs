//! Image decoding for camera frames and golden inputs: binary/ASCII PGM (P5/P2) and PNG.
//! Decoded samples keep their native range (`maxval`), so preprocessing can normalise
//! exactly as the model's training pipeline did (e.g. 8x8 digits with maxval 16).

/// A decoded image: `channels` interleaved samples per pixel, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// 1 (gray) or 3 (RGB). Alpha is dropped at decode.
    pub channels: usize,
    /// Largest possible sample value (255 for 8-bit PNG, the PGM header's maxval).
    pub maxval: u16,
    pub samples: Vec<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImageError {
    #[error("PGM header: {0}")]
    PgmHeader(String),
    #[error("PGM data is truncated: expected {expected} bytes of pixels, found {actual}")]
    PgmTruncated { expected: usize, actual: usize },
    #[error("PNG: {0}")]
    Png(String),
    #[error("image is {width}x{height}: larger than the {MAX_PIXELS}-pixel limit")]
    TooLarge { width: usize, height: usize },
    #[error("image has zero width or height")]
    Empty,
}

/// Bounds decoding work and memory for frames from the network (a 16-megapixel camera fits).
pub const MAX_PIXELS: usize = 16 * 1024 * 1024;

pub fn is_pgm(bytes: &[u8]) -> bool {
    bytes.starts_with(b"P5") || bytes.starts_with(b"P2")
}

pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// The PNG decoder's own state whatever the image (inflate window and tables): measured
/// ~100 KiB (crates/core/tests/working_bytes.rs); its row and inflate buffers grow with
/// the image and are covered by one more byte a pixel in [`Peek::decode_bytes`].
pub const DECODE_FIXED_BYTES: u64 = 256 * 1024;

/// What an image file's header says, read without decoding pixels: what the service
/// reserves memory for before it decodes a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    pub width: usize,
    pub height: usize,
    /// Channels of the decoded [`Image`] (1 or 3).
    pub channels: usize,
    /// Heap the decoder holds at its peak, beyond [`DECODE_FIXED_BYTES`]: for a PNG its
    /// output buffer, those samples widened to u16, the kept samples and a byte a pixel
    /// for its row and inflate buffers; for a PGM the samples.
    pub decode_bytes: u64,
}

/// Reads a PNG's IHDR or a PGM's header. `None` when the header is not there or not well
/// formed (decoding then fails with the reason).
pub fn peek(bytes: &[u8]) -> Option<Peek> {
    if is_png(bytes) {
        // Signature (8), IHDR length (4) and type (4), then width, height (big-endian),
        // bit depth, colour type.
        if bytes.get(12..16)? != b"IHDR" {
            return None;
        }
        let be = |at: usize| {
            let b = bytes.get(at..at + 4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let (width, height) = (be(16)?, be(20)?);
        let depth: u64 = if *bytes.get(24)? == 16 { 2 } else { 1 };
        // Channels after EXPAND (a palette may expand to RGBA), and kept (alpha dropped).
        let (decoded, kept): (u64, usize) = match bytes.get(25)? {
            0 => (1, 1),
            4 => (2, 1),
            2 => (3, 3),
            _ => (4, 3),
        };
        let px = (width as u64).checked_mul(height as u64)?;
        return Some(Peek {
            width,
            height,
            channels: kept,
            // Saturating: a forged header may claim 2^32 x 2^32 pixels (found by the
            // `image` fuzz target); decoding refuses it, the reservation must not wrap.
            decode_bytes: px.saturating_mul(decoded * depth + 2 * decoded + 2 * kept as u64 + 1),
        });
    }
    if is_pgm(bytes) {
        let mut pos = 2;
        let width = next_number(bytes, &mut pos)?;
        let height = next_number(bytes, &mut pos)?;
        return Some(Peek {
            width,
            height,
            channels: 1,
            decode_bytes: 2 * (width as u64).checked_mul(height as u64)?,
        });
    }
    None
}

fn check_dims(width: usize, height: usize) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Empty);
    }
    if width.saturating_mul(height) > MAX_PIXELS {
        return Err(ImageError::TooLarge { width, height });
    }
    Ok(())
}

/// Decodes a netpbm graymap (P5 binary or P2 ASCII; maxval 1..=65535).
pub fn decode_pgm(bytes: &[u8]) -> Result<Image, ImageError> {
    let bad = |m: &str| ImageError::PgmHeader(m.to_string());
    let mut pos = 2;
    let ascii = bytes.starts_with(b"P2");
    if !is_pgm(bytes) {
        return Err(bad("missing P5/P2 magic"));
    }
    let mut fields = [0usize; 3];
    for (i, field) in fields.iter_mut().enumerate() {
        *field = next_number(bytes, &mut pos).ok_or_else(|| {
            bad([
                "width is missing or not a number",
                "height is missing or not a number",
                "maxval is missing or not a number",
            ][i])
        })?;
    }
    let [width, height, maxval] = fields;
    check_dims(width, height)?;
    if maxval == 0 || maxval > 65535 {
        return Err(bad(&format!("maxval {maxval} is outside 1..=65535")));
    }
    let count = width * height;
    let samples = if ascii {
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            let n = next_number(bytes, &mut pos).ok_or(ImageError::PgmTruncated {
                expected: count,
                actual: v.len(),
            })?;
            if n > maxval {
                return Err(bad(&format!("sample {n} exceeds maxval {maxval}")));
            }
            v.push(n as u16);
        }
        v
    } else {
        // Exactly one whitespace byte separates the header from the raster.
        pos += 1;
        let wide = maxval > 255;
        let expected = count * if wide { 2 } else { 1 };
        let data = bytes.get(pos..).unwrap_or(&[]);
        if data.len() < expected {
            return Err(ImageError::PgmTruncated {
                expected,
                actual: data.len(),
            });
        }
        let v: Vec<u16> = if wide {
            data[..expected]
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect()
        } else {
            data[..expected].iter().map(|&b| b as u16).collect()
        };
        if let Some(&s) = v.iter().find(|&&s| s as usize > maxval) {
            return Err(bad(&format!("sample {s} exceeds maxval {maxval}")));
        }
        v
    };
    Ok(Image {
        width,
        height,
        channels: 1,
        maxval: maxval as u16,
        samples,
    })
}

/// Skips whitespace and `#` comments, then parses a decimal number.
fn next_number(bytes: &[u8], pos: &mut usize) -> Option<usize> {
    loop {
        match bytes.get(*pos)? {
            b if b.is_ascii_whitespace() => *pos += 1,
            b'#' => {
                while *bytes.get(*pos)? != b'\n' {
                    *pos += 1;
                }
            }
            _ => break,
        }
    }
    let start = *pos;
    while bytes.get(*pos).is_some_and(|b| b.is_ascii_digit()) {
        *pos += 1;
    }
    if start == *pos || *pos - start > 9 {
        return None;
    }
    std::str::from_utf8(&bytes[start..*pos]).ok()?.parse().ok()
}

/// Decodes a PNG (gray, gray+alpha, RGB, RGBA, palette; 1-16 bits). Alpha is dropped.
pub fn decode_png(bytes: &[u8]) -> Result<Image, ImageError> {
    let err = |e: png::DecodingError| ImageError::Png(e.to_string());
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    // Expand palettes and sub-byte depths to 8 bits; keep 16-bit samples as they are.
    decoder.set_transformations(png::Transformations::EXPAND);
    let info = decoder.read_header_info().map_err(err)?;
    check_dims(info.width as usize, info.height as usize)?;
    let mut reader = decoder.read_info().map_err(err)?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(err)?;
    let (width, height) = (frame.width as usize, frame.height as usize);
    let wide = frame.bit_depth == png::BitDepth::Sixteen;
    let raw: Vec<u16> = if wide {
        buf[..frame.buffer_size()]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    } else {
        buf[..frame.buffer_size()]
            .iter()
            .map(|&b| b as u16)
            .collect()
    };
    let (in_ch, out_ch) = match frame.color_type {
        png::ColorType::Grayscale => (1, 1),
        png::ColorType::GrayscaleAlpha => (2, 1),
        png::ColorType::Rgb => (3, 3),
        png::ColorType::Rgba => (4, 3),
        png::ColorType::Indexed => return Err(ImageError::Png("palette was not expanded".into())),
    };
    let row_samples = width * in_ch;
    // Rows may be padded in the output buffer (line_size), so walk row by row.
    let line = frame.line_size / if wide { 2 } else { 1 };
    let mut samples = Vec::with_capacity(width * height * out_ch);
    for y in 0..height {
        let row = raw.get(y * line..y * line + row_samples).ok_or_else(|| {
            ImageError::Png("decoded frame is shorter than its header says".into())
        })?;
        for px in row.chunks_exact(in_ch) {
            samples.extend_from_slice(&px[..out_ch]);
        }
    }
    Ok(Image {
        width,
        height,
        channels: out_ch,
        maxval: if wide { 65535 } else { 255 },
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pgm_binary_and_ascii() {
        let mut p5 = b"P5\n# digits\n3 2\n16\n".to_vec();
        p5.extend_from_slice(&[0, 1, 2, 14, 15, 16]);
        let img = decode_pgm(&p5).unwrap();
        assert_eq!((img.width, img.height, img.maxval), (3, 2, 16));
        assert_eq!(img.samples, vec![0, 1, 2, 14, 15, 16]);
        let p2 = b"P2 3 2 16\n0 1 2\n14 15 16\n";
        assert_eq!(decode_pgm(p2).unwrap(), img);
        let wide = [b"P5 1 1 65535\n".as_slice(), &[0x12, 0x34]].concat();
        assert_eq!(decode_pgm(&wide).unwrap().samples, vec![0x1234]);
    }

    #[test]
    fn peek_reads_headers_only() {
        let dims = |b: &[u8]| peek(b).map(|p| (p.width, p.height, p.channels));
        assert_eq!(dims(b"P5 # c\n7 3\n255\n"), Some((7, 3, 1)));
        assert_eq!(dims(b"P2 7"), None);
        let mut png = Vec::new();
        {
            let mut e = png::Encoder::new(&mut png, 5, 2);
            e.set_color(png::ColorType::Rgb);
            e.set_depth(png::BitDepth::Eight);
            let mut w = e.write_header().unwrap();
            w.write_image_data(&[7u8; 30]).unwrap();
        }
        assert_eq!(dims(&png), Some((5, 2, 3)));
        assert_eq!(peek(&png).unwrap().decode_bytes, 10 * (3 + 6 + 6 + 1));
        assert_eq!(dims(&png[..20]), None);
        assert_eq!(dims(b"GIF89a"), None);
    }

    /// Found by `fuzz/fuzz_targets/image.rs`: a PNG header claiming 0x44415478 x 0x9c636060
    /// pixels overflowed the reservation arithmetic (a panic in debug, a tiny reservation
    /// in release). The peek saturates; decoding refuses the image.
    #[test]
    fn forged_huge_dimensions_do_not_wrap_the_reservation() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRDATx\x9cc``dbfaec";
        let p = peek(png).unwrap();
        assert_eq!((p.width, p.height), (0x4441_5478, 0x9c63_6060));
        assert_eq!(p.decode_bytes, u64::MAX);
        assert!(decode_png(png).is_err());
        // A PGM's numbers have at most 9 digits: its largest claim still fits.
        let pgm = b"P5 999999999 999999999 255\n";
        assert_eq!(peek(pgm).unwrap().decode_bytes, 2 * 999_999_999u64.pow(2));
        assert!(decode_pgm(pgm).is_err());
    }

    #[test]
    fn pgm_errors() {
        assert!(matches!(
            decode_pgm(b"P5 3 2 16\n\x00\x01"),
            Err(ImageError::PgmTruncated {
                expected: 6,
                actual: 2
            })
        ));
        assert!(matches!(decode_pgm(b"P5 0 2 16\n"), Err(ImageError::Empty)));
        assert!(matches!(
            decode_pgm(b"P5 3 x 16\n"),
            Err(ImageError::PgmHeader(_))
        ));
        assert!(matches!(
            decode_pgm(b"P5 1 1 16\n\x11"),
            Err(ImageError::PgmHeader(_))
        ));
        assert!(matches!(
            decode_pgm(b"P5 100000 100000 255\n"),
            Err(ImageError::TooLarge { .. })
        ));
    }

    #[test]
    fn png_rgba_drops_alpha() {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, 2, 1);
            enc.set_color(png::ColorType::Rgba);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&[1, 2, 3, 255, 4, 5, 6, 0]).unwrap();
        }
        let img = decode_png(&bytes).unwrap();
        assert_eq!((img.width, img.height, img.channels), (2, 1, 3));
        assert_eq!(img.samples, vec![1, 2, 3, 4, 5, 6]);
        assert!(decode_png(&bytes[..bytes.len() / 2]).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_pgm(&[b"P5".as_slice(), &bytes].concat());
            let _ = decode_pgm(&[b"P2".as_slice(), &bytes].concat());
            let _ = decode_png(&[b"\x89PNG\r\n\x1a\n".as_slice(), &bytes].concat());
        }
    }
}
