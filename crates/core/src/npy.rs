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
    #[error("unsupported .npy dtype `{0}` (beltbox reads <f4, |i1, |u1)")]
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
    let dtype = match descr {
        "<f4" => DType::Float32,
        "|i1" | "<i1" | "i1" => DType::Int8,
        "|u1" | "<u1" | "u1" => DType::Uint8,
        other => return Err(NpyError::Dtype(other.to_string())),
    };
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
    let data = match dtype {
        DType::Float32 => TensorData::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DType::Int8 => TensorData::I8(data.iter().map(|&b| b as i8).collect()),
        DType::Uint8 => TensorData::U8(data.to_vec()),
    };
    Ok(Tensor::new(shape, data))
}

/// Serialises a tensor as .npy v1.0 (what `np.save` writes for these dtypes).
pub fn to_bytes(t: &Tensor) -> Vec<u8> {
    let descr = match t.dtype() {
        DType::Float32 => "<f4",
        DType::Int8 => "|i1",
        DType::Uint8 => "|u1",
    };
    let shape = match t.shape.len() {
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
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
    let mut out = Vec::with_capacity(10 + header.len() + t.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&t.as_bytes());
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
        let mut f64_header = bytes.clone();
        let at = f64_header.windows(3).position(|w| w == b"|u1").unwrap();
        f64_header[at..at + 3].copy_from_slice(b"<f8");
        assert_eq!(parse(&f64_header), Err(NpyError::Dtype("<f8".into())));
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
