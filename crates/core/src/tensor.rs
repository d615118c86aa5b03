//! Backend-neutral tensors: what crosses the boundary between preprocessing, a backend
//! (tract or LiteRT) and postprocessing. Kept deliberately small: a shape, typed data and,
//! for quantised tensors, the affine parameters needed to turn them back into reals.

use std::fmt;

/// One table of every element type beltbox moves across backend boundaries: the
/// `DType`, its `TensorData` variant, the Rust element type, its name in manifests and
/// errors, and its `.npy` descriptor. Everything that must agree per dtype is generated
/// from here, so a dtype cannot be half supported.
macro_rules! dtypes {
    ($m:ident) => {
        $m! {
            (Float32, F32, f32, "float32", "<f4"),
            (Float16, F16, half::f16, "float16", "<f2"),
            (Float64, F64, f64, "float64", "<f8"),
            (Int8, I8, i8, "int8", "|i1"),
            (Uint8, U8, u8, "uint8", "|u1"),
            (Int16, I16, i16, "int16", "<i2"),
            (Uint16, U16, u16, "uint16", "<u2"),
            (Int32, I32, i32, "int32", "<i4"),
            (Uint32, U32, u32, "uint32", "<u4"),
            (Int64, I64, i64, "int64", "<i8"),
            (Uint64, U64, u64, "uint64", "<u8"),
            (Bool, Bool, bool, "bool", "|b1"),
        }
    };
}
pub(crate) use dtypes;

macro_rules! define {
    ($(($d:ident, $v:ident, $t:ty, $name:literal, $npy:literal)),* $(,)?) => {
        /// Element types beltbox moves across backend boundaries.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
        #[serde(rename_all = "lowercase")]
        pub enum DType {
            $($d,)*
        }

        impl DType {
            pub const ALL: &'static [DType] = &[$(DType::$d,)*];

            pub fn size_of(self) -> usize {
                match self {
                    $(DType::$d => std::mem::size_of::<$t>(),)*
                }
            }

            /// The manifest spelling (`float32`, `int64`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $(DType::$d => $name,)*
                }
            }

            /// The `.npy` descriptor (little-endian).
            pub fn npy_descr(self) -> &'static str {
                match self {
                    $(DType::$d => $npy,)*
                }
            }

            /// The dtype of an `.npy` descriptor (`<f4`, `|i1`, `<i8`, ...; `=` and `|`
            /// byte orders are accepted where they mean the same thing).
            pub fn from_npy_descr(descr: &str) -> Option<DType> {
                let d = descr.as_bytes();
                let body = match d.first() {
                    Some(b'<' | b'|' | b'=') => &descr[1..],
                    Some(b'>') if descr.ends_with('1') => &descr[1..],
                    Some(b'>') => return None,
                    _ => descr,
                };
                $(if body == &$npy[1..] { return Some(DType::$d); })*
                None
            }
        }

        #[derive(Debug, Clone, PartialEq)]
        pub enum TensorData {
            $($v(Vec<$t>),)*
        }

        impl TensorData {
            pub fn dtype(&self) -> DType {
                match self {
                    $(TensorData::$v(_) => DType::$d,)*
                }
            }

            pub fn len(&self) -> usize {
                match self {
                    $(TensorData::$v(v) => v.len(),)*
                }
            }

            /// Every element as f32 (integers beyond 2^24 round; bools are 0 and 1).
            pub fn to_f32(&self) -> Vec<f32> {
                match self {
                    $(TensorData::$v(v) => v.iter().map(|&x| Element::to_f32(x)).collect(),)*
                }
            }

            /// No NaN or infinity (integers and bools always are finite). Checked in the
            /// element type, without converting: an f64 beyond f32's range is finite.
            pub fn all_finite(&self) -> bool {
                match self {
                    $(TensorData::$v(v) => v.iter().all(|&x| Element::finite(x)),)*
                }
            }

            /// Raw little-endian bytes of the data.
            pub fn to_le_bytes(&self) -> Vec<u8> {
                match self {
                    $(TensorData::$v(v) => v.iter().flat_map(|&x| Element::le_bytes(x)).collect(),)*
                }
            }

            /// Data of `dtype` from little-endian bytes; `None` when the length is not a
            /// whole number of elements, or a bool byte is not 0 or 1.
            pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Option<TensorData> {
                match dtype {
                    $(DType::$d => {
                        let n = std::mem::size_of::<$t>();
                        if bytes.len() % n != 0 {
                            return None;
                        }
                        bytes
                            .chunks_exact(n)
                            .map(<$t as Element>::from_le)
                            .collect::<Option<Vec<$t>>>()
                            .map(TensorData::$v)
                    })*
                }
            }
        }
    };
}
dtypes!(define);

/// What every element type can do: convert to f32 and to/from little-endian bytes.
pub trait Element: Copy {
    fn to_f32(self) -> f32;
    fn finite(self) -> bool;
    fn le_bytes(self) -> Vec<u8>;
    fn from_le(bytes: &[u8]) -> Option<Self>;
}

macro_rules! numeric_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            fn to_f32(self) -> f32 {
                self as f32
            }
            fn finite(self) -> bool {
                (self as f64).is_finite()
            }
            fn le_bytes(self) -> Vec<u8> {
                self.to_le_bytes().to_vec()
            }
            fn from_le(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map(<$t>::from_le_bytes)
            }
        }
    )*};
}
numeric_element!(f32, f64, i8, u8, i16, u16, i32, u32, i64, u64);

impl Element for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn finite(self) -> bool {
        self.is_finite()
    }
    fn le_bytes(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    fn from_le(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(half::f16::from_le_bytes)
    }
}

impl Element for bool {
    fn to_f32(self) -> f32 {
        if self {
            1.0
        } else {
            0.0
        }
    }
    fn finite(self) -> bool {
        true
    }
    fn le_bytes(self) -> Vec<u8> {
        vec![self as u8]
    }
    fn from_le(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

impl DType {
    /// Int8 and uint8 carry affine quantisation (a manifest gives their scale and zero
    /// point); every other integer type holds plain integers.
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Int8 | DType::Uint8)
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::Float32 | DType::Float16 | DType::Float64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Affine quantisation: real = (q - zero_point) * scale.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuantParams {
    pub scale: f32,
    pub zero_point: i32,
}

impl TensorData {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dense, row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
    /// Set for int8/uint8 tensors whose real value is known (model outputs, quantised inputs).
    pub quant: Option<QuantParams>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Tensor {
        Tensor {
            shape,
            data,
            quant: None,
        }
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Real values: float data as is, quantised data through its parameters (identity
    /// when none are known, which callers treat as raw integer scores).
    pub fn to_f32(&self) -> Vec<f32> {
        let (scale, zp) = self
            .quant
            .map(|q| (q.scale, q.zero_point as f32))
            .unwrap_or((1.0, 0.0));
        match &self.data {
            TensorData::I8(v) => v.iter().map(|&q| (q as f32 - zp) * scale).collect(),
            TensorData::U8(v) => v.iter().map(|&q| (q as f32 - zp) * scale).collect(),
            other => other.to_f32(),
        }
    }

    /// Raw little-endian bytes of the data (for backends that copy buffers in).
    pub fn as_bytes(&self) -> Vec<u8> {
        self.data.to_le_bytes()
    }
}
