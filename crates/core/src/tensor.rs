//! Backend-neutral tensors: what crosses the boundary between preprocessing, a backend
//! (tract or LiteRT) and postprocessing. Kept deliberately small: a shape, typed data and,
//! for quantised tensors, the affine parameters needed to turn them back into reals.

use std::fmt;

/// Element types beltbox moves across backend boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Float32,
    Int8,
    Uint8,
}

impl DType {
    pub fn size_of(self) -> usize {
        match self {
            DType::Float32 => 4,
            DType::Int8 | DType::Uint8 => 1,
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, DType::Float32)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::Float32 => "float32",
            DType::Int8 => "int8",
            DType::Uint8 => "uint8",
        })
    }
}

/// Affine quantisation: real = (q - zero_point) * scale.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuantParams {
    pub scale: f32,
    pub zero_point: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::Float32,
            TensorData::I8(_) => DType::Int8,
            TensorData::U8(_) => DType::Uint8,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::U8(v) => v.len(),
        }
    }

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
            TensorData::F32(v) => v.clone(),
            TensorData::I8(v) => v.iter().map(|&q| (q as f32 - zp) * scale).collect(),
            TensorData::U8(v) => v.iter().map(|&q| (q as f32 - zp) * scale).collect(),
        }
    }

    /// Raw little-endian bytes of the data (for backends that copy buffers in).
    pub fn as_bytes(&self) -> Vec<u8> {
        match &self.data {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as u8).collect(),
            TensorData::U8(v) => v.clone(),
        }
    }
}
