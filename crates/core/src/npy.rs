//! NumPy `.npy` files (format versions 1.0-3.0): golden references and tensor inputs.
//! Only what beltbox exchanges: little-endian float32, int8, uint8, C order.

use crate::tensor::{DType, Tensor, TensorData};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NpyError {
    #[error("not an .npy file (missing \\x93NUMPY magic)")]
    Magic,
    #[error("truncated .npy file: {0}")]
    Truncated(&'static str),
    #[error("unsupported .npy format version {0}.{1}")]
    Version(u8, u8),
    #[error("malformed .npy header: {0}")]
    Header(String),
    #[error("unsupported .npy dtype `{0}` (beltbox reads little-endian float16/32/64, int8-64, uint8-64 and bool)")]
    Dtype(String),
    #[error("Fortran-ordered .npy arrays are not supported; save with C order")]
    FortranOrder,
    #[error(".npy data has {actual} bytes but shape {shape:?} of {dtype} needs {expected}")]
    Size {
        shape: Vec<usize>,
        dtype: DType,
        expected: usize,
        actual: usize,
    },
}

const MAGIC: &[u8] = b"\x93NUMPY";

pub fn is_npy(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

pub fn parse(bytes: &[u8]) -> Result<Tensor, NpyError> {
    if !is_npy(bytes) {
        return Err(NpyError::Magic);
    }
    let (&major, &minor) = bytes
        .get(6)
        .zip(bytes.get(7))
        .ok_or(NpyError::Truncated("version"))?;
    let (header_len, start): (usize, usize) = match major {
        1 => {
            let b = bytes
                .get(8..10)
                .ok_or(NpyError::Truncated("header length"))?;
            (u16::from_le_bytes([b[0], b[1]]) as usize, 10)
        }
        2 | 3 => {
            let b = bytes
                .get(8..12)
                .ok_or(NpyError::Truncated("header length"))?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        _ => return Err(NpyError::Version(major, minor)),
    };
    let header_end = start
        .checked_add(header_len)
        .ok_or(NpyError::Truncated("header"))?;
    let header = bytes
        .get(start..header_end)
        .ok_or(NpyError::Truncated("header"))?;
    let header = std::str::from_utf8(header).map_err(|_| NpyError::Header("not text".into()))?;
    let descr = dict_value(header, "descr")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let dtype = DType::from_npy_descr(descr).ok_or_else(|| NpyError::Dtype(descr.to_string()))?;
    match dict_value(header, "fortran_order")?.as_str() {
        "False" => {}
        "True" => return Err(NpyError::FortranOrder),
        other => return Err(NpyError::Header(format!("fortran_order is `{other}`"))),
    }
    let shape = parse_shape(&dict_value(header, "shape")?)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError::Header("shape overflows".into()))?;
    let data = &bytes[header_end..];
    let expected = count.saturating_mul(dtype.size_of());
    if data.len() != expected {
        return Err(NpyError::Size {
            shape,
            dtype,
            expected,
            actual: data.len(),
        });
    }
    let data = TensorData::from_le_bytes(dtype, data)
        .ok_or_else(|| NpyError::Header(format!("{dtype} data holds a value that is not one")))?;
    Ok(Tensor::new(shape, data))
}

/// Serialises a tensor as .npy v1.0 (what `np.save` writes for these dtypes).
pub fn to_bytes(t: &Tensor) -> Vec<u8> {
    let head = header(&t.shape, t.dtype());
    let mut out = Vec::with_capacity(head.len() + t.len() * t.dtype().size_of());
    out.extend_from_slice(&head);
    out.extend_from_slice(&t.as_bytes());
    out
}

/// The bytes of an .npy v1.0 file before its data, for `shape` of `dtype` (a writer that
/// streams the data after it holds no second copy of a large tensor).
pub fn header(shape: &[usize], dtype: DType) -> Vec<u8> {
    let descr = dtype.npy_descr();
    let shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that data starts on a 64-byte boundary, header ends in '\n'.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Value text of `'key': value` in the header dict (tuples kept whole).
fn dict_value(header: &str, key: &str) -> Result<String, NpyError> {
    let missing = || NpyError::Header(format!("no `{key}` entry"));
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))
        .ok_or_else(missing)?;
    let rest = &header[pos + key.len() + 2..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')
        .ok_or_else(missing)?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(|| NpyError::Header(format!("unterminated `{key}` entry")))?;
    Ok(rest[..end].trim().to_string())
}

fn parse_shape(s: &str) -> Result<Vec<usize>, NpyError> {
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| NpyError::Header(format!("shape `{s}` is not a tuple")))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| NpyError::Header(format!("shape entry `{p}` is not a size")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        let t = Tensor::new(
            vec![2, 3],
            TensorData::F32(vec![1.0, -2.5, 3.0, 0.0, 5.5, 6.0]),
        );
        assert_eq!(parse(&to_bytes(&t)).unwrap(), t);
        let t = Tensor::new(vec![4], TensorData::I8(vec![-128, 0, 1, 127]));
        assert_eq!(parse(&to_bytes(&t)).unwrap(), t);
        let bytes = to_bytes(&t);
        assert_eq!((bytes.len() - t.len()) % 64, 0, "data not 64-byte aligned");
    }

    #[test]
    fn rejects() {
        assert_eq!(parse(b"hello"), Err(NpyError::Magic));
        let t = Tensor::new(vec![2, 2], TensorData::U8(vec![1, 2, 3, 4]));
        let bytes = to_bytes(&t);
        assert!(matches!(
            parse(&bytes[..bytes.len() - 1]),
            Err(NpyError::Size { .. })
        ));
        let mut complex_header = bytes.clone();
        let at = complex_header.windows(3).position(|w| w == b"|u1").unwrap();
        complex_header[at..at + 3].copy_from_slice(b"<c8");
        assert_eq!(parse(&complex_header), Err(NpyError::Dtype("<c8".into())));
        let mut big_endian = bytes.clone();
        big_endian[at..at + 3].copy_from_slice(b">u2");
        assert_eq!(parse(&big_endian), Err(NpyError::Dtype(">u2".into())));
        // A bool byte that is neither 0 nor 1 is not a bool.
        let b = to_bytes(&Tensor::new(vec![2], TensorData::Bool(vec![true, false])));
        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] = 7;
        assert!(matches!(parse(&bad), Err(NpyError::Header(_))));
        assert_eq!(parse(&b).unwrap().data, TensorData::Bool(vec![true, false]));
    }

    #[test]
    fn finiteness_is_judged_in_the_element_type() {
        // An f64 beyond f32's range is finite; a float16 NaN is not; integers always are.
        assert!(TensorData::F64(vec![1e300]).all_finite());
        assert!(!TensorData::F16(vec![half::f16::NAN]).all_finite());
        assert!(!TensorData::F32(vec![0.0, f32::INFINITY]).all_finite());
        assert!(TensorData::I64(vec![i64::MAX]).all_finite());
    }

    #[test]
    fn every_dtype_round_trips() {
        use crate::tensor::DType;
        for &dt in DType::ALL {
            let bytes: Vec<u8> = (0..3 * dt.size_of()).map(|i| (i % 2) as u8).collect();
            let data = TensorData::from_le_bytes(dt, &bytes).unwrap();
            let t = Tensor::new(vec![3], data);
            let back = parse(&to_bytes(&t)).unwrap();
            assert_eq!(back, t, "{dt}");
            assert_eq!(back.as_bytes(), bytes, "{dt}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = parse(&with_magic);
        }
    }
}
