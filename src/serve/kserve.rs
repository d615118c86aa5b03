//! KServe v2 / Open Inference Protocol over HTTP/JSON: request decoding (JSON tensors and
//! the binary tensor data extension), the mapping from a request tensor to the model's
//! input tensor, and response encoding (JSON or binary outputs, the classification
//! extension). Pure code over bytes and manifests: no sockets, no threads.
//!
//! Tensor `data` is never parsed into a `serde_json::Value` tree: it is kept as a raw
//! slice of the body and flattened straight into a typed vector, with the element count
//! and nesting depth checked while parsing. A 150k-element FP32 request then costs
//! 8 bytes per element, not ~80.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use beltbox_core::manifest::{InputSpec, Manifest};
pub use beltbox_core::preprocess::Elements;
use beltbox_core::preprocess::{self, ElementsError, Prepared};
use beltbox_core::tensor::{DType, Tensor, TensorData};

/// The header that announces the JSON part's length in a binary-extension message.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KserveError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("JSON nesting is deeper than {0} levels")]
    TooDeep(usize),
    #[error("{0}")]
    Invalid(String),
    #[error("input `{name}`: {message}")]
    Input { name: String, message: String },
    #[error("input `{name}` has {count} elements, over the {limit}-element limit")]
    TooManyElements {
        name: String,
        count: u64,
        limit: u64,
    },
    #[error("unknown output `{name}`; model `{model}` has outputs: {known}")]
    UnknownOutput {
        model: String,
        name: String,
        known: String,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_elements: u64,
    pub max_json_depth: usize,
}

/// KServe v2 datatype names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl Datatype {
    pub fn parse(s: &str) -> Option<Datatype> {
        Some(match s {
            "BOOL" => Datatype::Bool,
            "UINT8" => Datatype::Uint8,
            "UINT16" => Datatype::Uint16,
            "UINT32" => Datatype::Uint32,
            "UINT64" => Datatype::Uint64,
            "INT8" => Datatype::Int8,
            "INT16" => Datatype::Int16,
            "INT32" => Datatype::Int32,
            "INT64" => Datatype::Int64,
            "FP16" => Datatype::Fp16,
            "FP32" => Datatype::Fp32,
            "FP64" => Datatype::Fp64,
            "BYTES" => Datatype::Bytes,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    pub fn of(d: DType) -> Datatype {
        match d {
            DType::Float32 => Datatype::Fp32,
            DType::Float16 => Datatype::Fp16,
            DType::Float64 => Datatype::Fp64,
            DType::Int8 => Datatype::Int8,
            DType::Uint8 => Datatype::Uint8,
            DType::Int16 => Datatype::Int16,
            DType::Uint16 => Datatype::Uint16,
            DType::Int32 => Datatype::Int32,
            DType::Uint32 => Datatype::Uint32,
            DType::Int64 => Datatype::Int64,
            DType::Uint64 => Datatype::Uint64,
            DType::Bool => Datatype::Bool,
        }
    }

    /// The tensor dtype of a numeric datatype (`None` for BYTES).
    pub fn dtype(self) -> Option<DType> {
        DType::ALL
            .iter()
            .copied()
            .find(|&d| Datatype::of(d) == self)
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(borrow, default)]
    parameters: Option<Box<Params<'a>>>,
    #[serde(borrow)]
    inputs: AtMost<RawInput<'a>, Tensors>,
    #[serde(borrow, default)]
    outputs: Option<AtMost<RawOutput<'a>, Tensors>>,
}

#[derive(Deserialize)]
struct RawInput<'a> {
    name: String,
    shape: AtMost<i64, Rank>,
    datatype: String,
    #[serde(borrow, default)]
    parameters: Option<Box<Params<'a>>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawOutput<'a> {
    name: String,
    #[serde(borrow, default)]
    parameters: Option<Box<Params<'a>>>,
}

/// Most inputs or outputs one request may name (a model has a handful).
pub const MAX_TENSORS: usize = 1024;
/// Most dimensions a request tensor may have.
pub const MAX_RANK: usize = 32;

/// How long a JSON array in the envelope may be.
trait Limit {
    const MAX: usize;
    const WHAT: &'static str;
}
struct Tensors;
impl Limit for Tensors {
    const MAX: usize = MAX_TENSORS;
    const WHAT: &'static str = "inputs or outputs";
}
struct Rank;
impl Limit for Rank {
    const MAX: usize = MAX_RANK;
    const WHAT: &'static str = "dimensions in a shape";
}

/// A JSON array refused as soon as it passes its limit, before its vector grows: a
/// million `{"name":""}` outputs in 1 MB of JSON cost ~10 MB of heap, beyond
/// [`decoded_bound`] (`tests/kserve_memory.rs`).
struct AtMost<T, L>(Vec<T>, std::marker::PhantomData<L>);

impl<'de, T: Deserialize<'de>, L: Limit> Deserialize<'de> for AtMost<T, L> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items<T, L>(std::marker::PhantomData<(T, L)>);
        impl<'de, T: Deserialize<'de>, L: Limit> Visitor<'de> for Items<T, L> {
            type Value = AtMost<T, L>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array of at most {} {}", L::MAX, L::WHAT)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if out.len() == L::MAX {
                        return Err(serde::de::Error::custom(format!(
                            "more than {} {}",
                            L::MAX,
                            L::WHAT
                        )));
                    }
                    out.push(item);
                }
                Ok(AtMost(out, std::marker::PhantomData))
            }
        }
        d.deserialize_seq(Items(std::marker::PhantomData))
    }
}

/// The `parameters` beltbox reads; every other key is skipped without being built. Parsed
/// into `serde_json::Value`s, a client's `"parameters": {"x": [0,0,0,…]}` took ~16x its
/// text (32 bytes a `0,`), beyond [`decoded_bound`]; boxed, so an input or output without
/// parameters costs one pointer (`tests/kserve_memory.rs` measures the bound).
#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default)]
    binary_data_size: Option<&'a RawValue>,
    #[serde(borrow, default)]
    binary_data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    binary_data_output: Option<&'a RawValue>,
    #[serde(borrow, default)]
    classification: Option<&'a RawValue>,
}

/// Decoded request tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: Datatype,
    pub data: Elements,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: bool,
    /// Classification extension: top-k as "score:index:label" strings.
    pub classification: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<InputTensor>,
    /// `None`: all outputs, JSON unless `binary_data_output` was set.
    pub outputs: Option<Vec<RequestedOutput>>,
    pub binary_data_output: bool,
}

/// Greatest nesting of `[`/`{` outside strings: checked before serde sees the body, so
/// a hostile `[[[[…` costs one linear scan, not a deep recursion.
pub fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A boolean parameter: `true` only when it is JSON `true`.
fn param_bool<'a>(
    p: &'a Option<Box<Params<'a>>>,
    key: fn(&'a Params<'a>) -> Option<&'a RawValue>,
) -> bool {
    p.as_deref()
        .and_then(key)
        .is_some_and(|v| serde_json::from_str::<bool>(v.get()).unwrap_or(false))
}

/// A count parameter: `None` when absent, `Err` when not a non-negative integer.
fn param_u64<'a>(
    p: &'a Option<Box<Params<'a>>>,
    key: fn(&'a Params<'a>) -> Option<&'a RawValue>,
) -> Option<Result<u64, ()>> {
    p.as_deref()
        .and_then(key)
        .map(|v| serde_json::from_str::<u64>(v.get()).map_err(|_| ()))
}

/// Splits a body into its JSON part and binary tail (`Inference-Header-Content-Length`).
pub fn split_body<'a>(
    body: &'a [u8],
    header_len: Option<&str>,
) -> Result<(&'a [u8], &'a [u8]), KserveError> {
    match header_len {
        None => Ok((body, &[])),
        Some(text) => {
            let n: usize = text.trim().parse().map_err(|_| {
                KserveError::Invalid(format!(
                    "Inference-Header-Content-Length `{text}` is not a byte count"
                ))
            })?;
            if n > body.len() {
                return Err(KserveError::Invalid(format!(
                    "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
            Ok(body.split_at(n))
        }
    }
}

/// Most elements a BYTES input may have (the models take one encoded file per input).
pub const MAX_BYTES_ELEMENTS: usize = 16;

/// An upper bound of the heap [`decode_request`] allocates for a body of `body_len`
/// bytes whose JSON part is `json_len` bytes (the rest binary): a JSON element takes at
/// least 2 bytes (`0,`) and becomes at most 8 (INT64, FP64), in a vector that may have
/// doubled (so 8x the JSON); binary data is copied once; BYTES strings are capped at
/// [`MAX_BYTES_ELEMENTS`]; plus the parsed envelope.
pub fn decoded_bound(body_len: u64, json_len: Option<u64>) -> u64 {
    let json = json_len.unwrap_or(body_len).min(body_len);
    let binary = body_len - json;
    8 * json + binary + MAX_BYTES_ELEMENTS as u64 * 64 + 16 * 1024
}

/// Parses an inference request (JSON part + binary tail).
pub fn decode_request(
    json_part: &[u8],
    binary: &[u8],
    limits: &DecodeLimits,
) -> Result<InferRequest, KserveError> {
    let depth = json_depth(json_part);
    if depth > limits.max_json_depth {
        return Err(KserveError::TooDeep(limits.max_json_depth));
    }
    let raw: RawRequest =
        serde_json::from_slice(json_part).map_err(|e| KserveError::Json(e.to_string()))?;
    if raw.inputs.0.is_empty() {
        return Err(KserveError::Invalid("`inputs` is empty".into()));
    }
    let mut offset = 0usize;
    let mut inputs = Vec::with_capacity(raw.inputs.0.len());
    for inp in raw.inputs.0 {
        let bad = |message: String| KserveError::Input {
            name: inp.name.clone(),
            message,
        };
        let datatype = Datatype::parse(&inp.datatype)
            .ok_or_else(|| bad(format!("unknown datatype `{}`", inp.datatype)))?;
        let mut shape = Vec::with_capacity(inp.shape.0.len());
        let mut count: u64 = 1;
        for &d in &inp.shape.0 {
            let d =
                u64::try_from(d).map_err(|_| bad(format!("negative dimension {d} in shape")))?;
            count = count.saturating_mul(d);
            shape.push(usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large")))?);
        }
        if count > limits.max_elements {
            return Err(KserveError::TooManyElements {
                name: inp.name.clone(),
                count,
                limit: limits.max_elements,
            });
        }
        let data = match (param_u64(&inp.parameters, |p| p.binary_data_size), inp.data) {
            (Some(Err(())), _) => {
                return Err(bad(
                    "parameter `binary_data_size` must be a non-negative integer".into(),
                ))
            }
            (Some(Ok(_)), Some(_)) => {
                return Err(bad("has both `data` and `binary_data_size`".into()))
            }
            (Some(Ok(size)), None) => {
                let size = usize::try_from(size)
                    .map_err(|_| bad("binary_data_size is too large".into()))?;
                let end = offset
                    .checked_add(size)
                    .filter(|&e| e <= binary.len())
                    .ok_or_else(|| {
                        bad(format!(
                            "binary_data_size {size} at offset {offset} runs past the {} bytes of binary data sent (truncated payload?)",
                            binary.len()
                        ))
                    })?;
                let chunk = &binary[offset..end];
                offset = end;
                from_binary(chunk, datatype, count).map_err(bad)?
            }
            (None, Some(raw_data)) => from_json(raw_data, datatype, limits).map_err(bad)?,
            (None, None) => return Err(bad("has neither `data` nor `binary_data_size`".into())),
        };
        if data.len() as u64 != count {
            return Err(bad(format!(
                "shape {:?} needs {count} elements but {} were sent",
                inp.shape.0,
                data.len()
            )));
        }
        inputs.push(InputTensor {
            name: inp.name,
            shape,
            datatype,
            data,
        });
    }
    if offset != binary.len() {
        return Err(KserveError::Invalid(format!(
            "{} bytes of binary data follow the JSON header but the inputs' binary_data_size add up to {offset}",
            binary.len()
        )));
    }
    let outputs = match raw.outputs {
        None => None,
        Some(list) => Some(
            list.0
                .into_iter()
                .map(|o| {
                    let classification = match param_u64(&o.parameters, |p| p.classification) {
                        None => None,
                        Some(Ok(k)) if k > 0 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
                        Some(_) => {
                            return Err(KserveError::Invalid(format!(
                            "output `{}`: parameter `classification` must be a positive integer",
                            o.name
                        )))
                        }
                    };
                    Ok(RequestedOutput {
                        binary: param_bool(&o.parameters, |p| p.binary_data),
                        classification,
                        name: o.name,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(InferRequest {
        id: raw.id,
        inputs,
        outputs,
        binary_data_output: param_bool(&raw.parameters, |p| p.binary_data_output),
    })
}

fn from_binary(chunk: &[u8], dt: Datatype, count: u64) -> Result<Elements, String> {
    let fixed = |size: u64| -> Result<(), String> {
        if chunk.len() as u64 != count.saturating_mul(size) {
            Err(format!(
                "binary data is {} bytes; {count} {dt} elements need {}",
                chunk.len(),
                count.saturating_mul(size)
            ))
        } else {
            Ok(())
        }
    };
    match dt {
        Datatype::Fp32 => {
            fixed(4)?;
            let v: Vec<f32> = chunk
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(format!("element {i} is NaN or infinite"));
            }
            Ok(Elements::F32(v))
        }
        Datatype::Int8 => {
            fixed(1)?;
            Ok(Elements::I8(chunk.iter().map(|&b| b as i8).collect()))
        }
        Datatype::Uint8 => {
            fixed(1)?;
            Ok(Elements::U8(chunk.to_vec()))
        }
        Datatype::Bytes => {
            // Each element: 4-byte little-endian length, then the bytes.
            let mut out = Vec::new();
            let mut rest = chunk;
            while !rest.is_empty() {
                if rest.len() < 4 || out.len() as u64 >= count {
                    return Err("BYTES binary data is not a sequence of length-prefixed elements matching the shape".into());
                }
                let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let body = rest
                    .get(4..4 + n)
                    .ok_or("BYTES element length runs past the binary data (truncated payload?)")?;
                out.push(body.to_vec());
                rest = &rest[4 + n..];
            }
            Ok(Elements::Bytes(out))
        }
        other => {
            let Some(d) = other.dtype() else {
                return Err(format!("datatype {other} is not accepted"));
            };
            fixed(d.size_of() as u64)?;
            let data = TensorData::from_le_bytes(d, chunk).ok_or_else(|| {
                format!("binary data is not valid {other} (BOOL bytes are 0 or 1)")
            })?;
            // As for FP32 above: a NaN or infinity is refused at the door.
            if !data.all_finite() {
                return Err("an element is NaN or infinite".into());
            }
            Ok(Elements::Typed(data))
        }
    }
}

/// Flattens (possibly nested) JSON arrays of numbers or strings into typed elements.
fn from_json(raw: &RawValue, dt: Datatype, limits: &DecodeLimits) -> Result<Elements, String> {
    let mut sink = match dt {
        Datatype::Fp32 => Elements::F32(Vec::new()),
        Datatype::Int8 => Elements::I8(Vec::new()),
        Datatype::Uint8 => Elements::U8(Vec::new()),
        Datatype::Bytes => Elements::Bytes(Vec::new()),
        other => match other.dtype() {
            Some(d) => Elements::Typed(
                TensorData::from_le_bytes(d, &[]).unwrap_or(TensorData::F32(vec![])),
            ),
            None => return Err(format!("datatype {other} is not accepted")),
        },
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Flatten {
        out: &mut sink,
        limit: limits.max_elements,
    }
    .deserialize(&mut de)
    .map_err(|e| format!("data: {e}"))?;
    Ok(sink)
}

struct Flatten<'a> {
    out: &'a mut Elements,
    limit: u64,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Flatten<'_> {
    fn push_number<E: serde::de::Error>(&mut self, v: f64, integral: bool) -> Result<(), E> {
        self.push(Num::F(v, integral))
    }

    fn push<E: serde::de::Error>(&mut self, n: Num) -> Result<(), E> {
        if self.out.len() as u64 >= self.limit {
            return Err(E::custom(format!("more than {} elements", self.limit)));
        }
        let (v, integral) = match n {
            Num::F(v, integral) => (v, integral),
            Num::I(i) => (i as f64, true),
        };
        if let Elements::Typed(d) = self.out {
            return push_typed(d, n).map_err(E::custom);
        }
        let int = |lo: f64, hi: f64, name: &str| -> Result<f64, E> {
            if !integral || v < lo || v > hi {
                Err(E::custom(format!("{v} is not an {name} value")))
            } else {
                Ok(v)
            }
        };
        match self.out {
            Elements::F32(o) => {
                let x = v as f32;
                if !x.is_finite() {
                    return Err(E::custom(format!("{v} does not fit in FP32")));
                }
                o.push(x)
            }
            Elements::I8(o) => o.push(int(-128.0, 127.0, "INT8")? as i8),
            Elements::U8(o) => o.push(int(0.0, 255.0, "UINT8")? as u8),
            Elements::Bytes(_) => return Err(E::custom("BYTES elements must be strings")),
            Elements::Typed(_) => {}
        }
        Ok(())
    }
}

/// A JSON number as parsed: integers exactly (an INT64 id above 2^53 must not round).
#[derive(Clone, Copy)]
enum Num {
    /// A float, and whether it has no fractional part.
    F(f64, bool),
    I(i128),
}

/// Appends one JSON number to typed data, refusing values the datatype cannot hold.
fn push_typed(d: &mut TensorData, n: Num) -> Result<(), String> {
    fn int<T: TryFrom<i128>>(n: Num, name: &str) -> Result<T, String> {
        let i = match n {
            Num::I(i) => i,
            Num::F(v, true) if v.abs() < 9.0e15 => v as i128,
            Num::F(v, _) => return Err(format!("{v} is not an {name} value")),
        };
        T::try_from(i).map_err(|_| format!("{i} is not an {name} value"))
    }
    let float = |n: Num| match n {
        Num::F(v, _) => v,
        Num::I(i) => i as f64,
    };
    match d {
        TensorData::F16(o) => {
            let x = half::f16::from_f64(float(n));
            if !x.is_finite() {
                return Err(format!("{} does not fit in FP16", float(n)));
            }
            o.push(x)
        }
        TensorData::F64(o) => o.push(float(n)),
        TensorData::F32(o) => o.push(float(n) as f32),
        TensorData::I8(o) => o.push(int(n, "INT8")?),
        TensorData::U8(o) => o.push(int(n, "UINT8")?),
        TensorData::I16(o) => o.push(int(n, "INT16")?),
        TensorData::U16(o) => o.push(int(n, "UINT16")?),
        TensorData::I32(o) => o.push(int(n, "INT32")?),
        TensorData::U32(o) => o.push(int(n, "UINT32")?),
        TensorData::I64(o) => o.push(int(n, "INT64")?),
        TensorData::U64(o) => o.push(int(n, "UINT64")?),
        TensorData::Bool(o) => match int::<u8>(n, "BOOL")? {
            0 => o.push(false),
            1 => o.push(true),
            v => return Err(format!("{v} is not a BOOL value (0 or 1)")),
        },
    }
    Ok(())
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers (or strings for BYTES), flat or nested")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let limit = self.limit;
        let out = self.out;
        while seq
            .next_element_seed(Flatten {
                out: &mut *out,
                limit,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(mut self, v: u64) -> Result<(), E> {
        self.push(Num::I(i128::from(v)))
    }
    fn visit_i64<E: serde::de::Error>(mut self, v: i64) -> Result<(), E> {
        self.push(Num::I(i128::from(v)))
    }
    fn visit_bool<E: serde::de::Error>(mut self, v: bool) -> Result<(), E> {
        match self.out {
            Elements::Typed(TensorData::Bool(_)) => self.push(Num::I(i128::from(v))),
            _ => Err(E::custom(format!("`{v}` where a number was expected"))),
        }
    }
    fn visit_f64<E: serde::de::Error>(mut self, v: f64) -> Result<(), E> {
        self.push_number(v, v.fract() == 0.0)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        match self.out {
            Elements::Bytes(o) => {
                // A BYTES input carries encoded files, one per request; many tiny strings
                // would cost ~50 bytes of heap per 3 bytes of JSON (decoded_bound).
                if o.len() >= MAX_BYTES_ELEMENTS {
                    return Err(E::custom(format!(
                        "more than {MAX_BYTES_ELEMENTS} BYTES elements (each is one encoded file)"
                    )));
                }
                o.push(v.as_bytes().to_vec());
                Ok(())
            }
            _ => Err(E::custom(format!(
                "string `{v}` where a number was expected"
            ))),
        }
    }
}

/// The forms of input a model accepts, for error messages and metadata.
pub fn accepted_forms(spec: &InputSpec) -> String {
    let dt = Datatype::of(spec.dtype);
    let shape = spec.shape_range();
    let mut forms = vec![format!("{dt} {shape} (the model tensor)")];
    if spec.dtype.is_quantized() {
        forms.push(format!("FP32 {shape} (quantised by the server)"));
    }
    // Images only where the manifest says how to turn one into the tensor; a tensor-only
    // input refuses them (naming the input), so it must not advertise them either.
    if spec.preprocess.is_some() {
        forms.push(
            "UINT8 image [H, W], [H, W, C] or [1, H, W, C] with C 1 or 3 (resized and normalised)"
                .into(),
        );
        forms.push("BYTES [1]: a PNG, PGM or NPY file".into());
    } else {
        forms.push("BYTES [1]: an NPY file".into());
    }
    forms.join("; ")
}

/// The model's input tensor from a request tensor (the preprocessing is
/// `preprocess::from_elements`); errors name the input and list the accepted forms.
pub fn to_model_input(inp: InputTensor, spec: &InputSpec) -> Result<Prepared, KserveError> {
    let InputTensor {
        name,
        shape,
        datatype,
        data,
    } = inp;
    preprocess::from_elements(&shape, data, spec).map_err(|e| KserveError::Input {
        name,
        message: match e {
            ElementsError::File(_) | ElementsError::FileCount(_) => {
                format!("{datatype} {shape:?} {e}")
            }
            _ => format!(
                "{datatype} {shape:?} {e}; accepted: {}",
                accepted_forms(spec)
            ),
        },
    })
}

/// The request's tensors in the manifest's input order: every model input exactly once,
/// by name (KServe v2 names inputs; their order in the request is free). The error is the
/// message for a 400.
pub fn order_inputs(inputs: Vec<InputTensor>, m: &Manifest) -> Result<Vec<InputTensor>, String> {
    let expected: Vec<&str> = m.inputs.iter().map(|i| i.name.as_str()).collect();
    let got: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
    let wrong = || {
        let takes = match expected.as_slice() {
            [one] => format!("one input named `{one}`"),
            many => format!("{} inputs named {:?}", many.len(), many),
        };
        format!(
            "model `{}` takes {takes}; the request has {:?}",
            m.name, got
        )
    };
    if inputs.len() != expected.len() {
        return Err(wrong());
    }
    let mut slots: Vec<Option<InputTensor>> = expected.iter().map(|_| None).collect();
    for t in inputs {
        match expected.iter().position(|n| *n == t.name) {
            Some(i) if slots[i].is_none() => slots[i] = Some(t),
            _ => return Err(wrong()),
        }
    }
    slots.into_iter().map(|s| s.ok_or_else(wrong)).collect()
}

/// An input's shape as KServe v2 metadata writes it: a variable dimension is -1 (its range
/// goes in the input's parameters).
fn metadata_shape(i: &InputSpec) -> Vec<i64> {
    (0..i.shape.len())
        .map(|a| match i.min()[a] == i.max()[a] {
            true => i64::try_from(i.shape[a]).unwrap_or(i64::MAX),
            false => -1,
        })
        .collect()
}

/// Model metadata (`GET /v2/models/{name}[/versions/{v}]`).
pub fn model_metadata(m: &Manifest, platform: &str) -> Value {
    let outputs: Vec<Value> = m
        .outputs
        .iter()
        .map(|o| json!({ "name": o.name, "datatype": Datatype::of(o.dtype).name(), "shape": o.shape }))
        .collect();
    let inputs: Vec<Value> = m
        .inputs
        .iter()
        .map(|i| {
            let shape = metadata_shape(i);
            let mut params = json!({ "accepted": accepted_forms(i) });
            if i.is_dynamic() {
                params["min_shape"] = json!(i.min());
                params["max_shape"] = json!(i.max());
            }
            json!({
                "name": i.name,
                "datatype": Datatype::of(i.dtype).name(),
                "shape": shape,
                "parameters": params
            })
        })
        .collect();
    json!({
        "name": m.name,
        "versions": [m.version.to_string()],
        "platform": platform,
        "inputs": inputs,
        "outputs": outputs,
    })
}

/// One output to encode.
pub struct OutputTensor<'a> {
    pub name: &'a str,
    pub tensor: &'a Tensor,
    /// Labels for the classification extension.
    pub labels: &'a [String],
}

/// Per-request facts returned in the response `parameters` (flat: the protocol allows
/// only string, number and bool values).
pub type ResponseParams = Vec<(&'static str, Value)>;

/// Encodes the response: `(json, binary tail)`; the tail is empty for JSON-only answers.
pub fn encode_response(
    model: &Manifest,
    id: Option<&str>,
    outputs: &[OutputTensor<'_>],
    requested: Option<&[RequestedOutput]>,
    binary_data_output: bool,
    params: ResponseParams,
) -> Result<(Vec<u8>, Vec<u8>), KserveError> {
    let known = || {
        outputs
            .iter()
            .map(|o| o.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wanted: Vec<RequestedOutput> = match requested {
        Some(list) => list.to_vec(),
        None => outputs
            .iter()
            .map(|o| RequestedOutput {
                name: o.name.to_string(),
                binary: binary_data_output,
                classification: None,
            })
            .collect(),
    };
    let mut binary = Vec::new();
    let mut out_json = Vec::with_capacity(wanted.len());
    for w in &wanted {
        let o = outputs.iter().find(|o| o.name == w.name).ok_or_else(|| {
            KserveError::UnknownOutput {
                model: model.name.clone(),
                name: w.name.clone(),
                known: known(),
            }
        })?;
        let binary_wanted = w.binary || (requested.is_some() && binary_data_output);
        let mut entry = Map::new();
        entry.insert("name".into(), json!(o.name));
        match w.classification {
            Some(k) => {
                let values = o.tensor.to_f32();
                let classes: Vec<String> = beltbox_core::postprocess::top_k(&values, k)
                    .into_iter()
                    .map(|(i, v)| {
                        let label = o.labels.get(i).map(String::as_str).unwrap_or("");
                        format!("{v:.6}:{i}:{label}")
                    })
                    .collect();
                entry.insert("datatype".into(), json!("BYTES"));
                entry.insert("shape".into(), json!([classes.len()]));
                if binary_wanted {
                    let start = binary.len();
                    for c in &classes {
                        binary.extend_from_slice(&(c.len() as u32).to_le_bytes());
                        binary.extend_from_slice(c.as_bytes());
                    }
                    entry.insert(
                        "parameters".into(),
                        json!({ "binary_data_size": binary.len() - start }),
                    );
                } else {
                    entry.insert("data".into(), json!(classes));
                }
            }
            None => {
                entry.insert(
                    "datatype".into(),
                    json!(Datatype::of(o.tensor.dtype()).name()),
                );
                entry.insert("shape".into(), json!(o.tensor.shape));
                if binary_wanted {
                    let bytes = o.tensor.as_bytes();
                    entry.insert(
                        "parameters".into(),
                        json!({ "binary_data_size": bytes.len() }),
                    );
                    binary.extend_from_slice(&bytes);
                } else {
                    let data = match &o.tensor.data {
                        TensorData::F32(v) => json!(v),
                        TensorData::F16(v) => {
                            json!(v.iter().map(|x| x.to_f32()).collect::<Vec<_>>())
                        }
                        TensorData::F64(v) => json!(v),
                        TensorData::I8(v) => json!(v),
                        TensorData::U8(v) => json!(v),
                        TensorData::I16(v) => json!(v),
                        TensorData::U16(v) => json!(v),
                        TensorData::I32(v) => json!(v),
                        TensorData::U32(v) => json!(v),
                        TensorData::I64(v) => json!(v),
                        TensorData::U64(v) => json!(v),
                        TensorData::Bool(v) => json!(v),
                    };
                    entry.insert("data".into(), data);
                }
            }
        }
        out_json.push(Value::Object(entry));
    }
    let mut resp = Map::new();
    resp.insert("model_name".into(), json!(model.name));
    resp.insert("model_version".into(), json!(model.version.to_string()));
    if let Some(id) = id {
        resp.insert("id".into(), json!(id));
    }
    resp.insert(
        "parameters".into(),
        Value::Object(
            params
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        ),
    );
    resp.insert("outputs".into(), Value::Array(out_json));
    let text =
        serde_json::to_vec(&Value::Object(resp)).map_err(|e| KserveError::Json(e.to_string()))?;
    Ok((text, binary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: DecodeLimits = DecodeLimits {
        max_elements: 1000,
        max_json_depth: 8,
    };

    fn dec(json: &str) -> Result<InferRequest, KserveError> {
        decode_request(json.as_bytes(), &[], &L)
    }

    fn input_spec(preprocess: Option<beltbox_core::manifest::Preprocess>) -> InputSpec {
        InputSpec {
            name: "x".into(),
            min_shape: None,
            max_shape: None,
            shape_step: None,
            shape: vec![1, 3, 8, 8],
            dtype: DType::Float32,
            layout: Default::default(),
            preprocess,
            quantization: None,
        }
    }

    #[test]
    fn a_dynamic_input_is_minus_one_in_metadata_and_its_range_in_the_forms() {
        let mut spec = input_spec(None);
        assert_eq!(metadata_shape(&spec), vec![1, 3, 8, 8]);
        spec.min_shape = Some(vec![1, 3, 4, 8]);
        spec.max_shape = Some(vec![1, 3, 16, 8]);
        assert_eq!(metadata_shape(&spec), vec![1, 3, -1, 8]);
        let forms = accepted_forms(&spec);
        assert!(forms.contains("FP32 [1, 3, 4..=16, 8]"), "{forms}");
    }

    /// Metadata offers images only to inputs with `preprocess` (a tensor-only input
    /// refuses them, so advertising them was wrong).
    #[test]
    fn accepted_forms_offer_images_only_with_preprocess() {
        let tensor_only = accepted_forms(&input_spec(None));
        assert!(!tensor_only.contains("image"), "{tensor_only}");
        assert!(!tensor_only.contains("PNG"), "{tensor_only}");
        assert!(tensor_only.contains("NPY"), "{tensor_only}");
        let image = accepted_forms(&input_spec(Some(beltbox_core::manifest::Preprocess {
            resize: [8, 8],
            resize_mode: Default::default(),
            letterbox_anchor: Default::default(),
            pad: 0.0,
            color: beltbox_core::manifest::Color::Rgb,
            scale: 1.0,
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
        })));
        assert!(image.contains("UINT8 image"), "{image}");
        assert!(image.contains("PNG"), "{image}");
    }

    #[test]
    fn flat_and_nested_data_decode_identically() {
        let flat =
            dec(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,4]}]}"#)
                .unwrap();
        let nested = dec(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}]}"#,
        )
        .unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat.inputs[0].data, Elements::F32(vec![1.0, 2.5, 3.0, 4.0]));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let e = dec(r#"{"inputs":[{"name":"x","shape":[3],"datatype":"INT8","data":[1,2]}]}"#)
            .unwrap_err();
        assert!(
            e.to_string().contains("needs 3 elements but 2 were sent"),
            "{e}"
        );
        let e = dec(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("300 is not an INT8 value"), "{e}");
        let e = dec(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1.5]}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("not an INT8"), "{e}");
        let e = dec(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP17","data":[1]}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown datatype `FP17`"), "{e}");
        let e = dec(r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("negative dimension"), "{e}");
        let e = dec(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("where a number was expected"), "{e}");
        let e = dec(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1e300]}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("does not fit in FP32"), "{e}");
        let e = dec(r#"{"inputs":[{"name":"x","shape":[100000],"datatype":"FP32","data":[1]}]}"#)
            .unwrap_err();
        assert!(matches!(
            e,
            KserveError::TooManyElements { count: 100000, .. }
        ));
        let e = dec(
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[[[[[[[[[1]]]]]]]]]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e, KserveError::TooDeep(8));
        assert!(matches!(dec("{\"inputs\":"), Err(KserveError::Json(_))));
        assert!(matches!(
            dec(r#"{"inputs":[]}"#),
            Err(KserveError::Invalid(_))
        ));
    }

    #[test]
    fn envelope_arrays_and_parameters_are_bounded() {
        let shape = vec!["1"; MAX_RANK + 1].join(",");
        let e = dec(&format!(
            r#"{{"inputs":[{{"name":"x","shape":[{shape}],"datatype":"FP32","data":[1]}}]}}"#
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("more than 32 dimensions in a shape"),
            "{e}"
        );
        let outs = vec![r#"{"name":"y"}"#; MAX_TENSORS + 1].join(",");
        let e = dec(&format!(
            r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":[1]}}],"outputs":[{outs}]}}"#
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("more than 1024 inputs or outputs"),
            "{e}"
        );
        // Unknown parameters are skipped, known ones keep their JSON meaning.
        let r = dec(r#"{"parameters":{"x":[1,{"y":2}],"binary_data_output":true},"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":{"z":null}}],"outputs":[{"name":"y","parameters":{"binary_data":1,"classification":3}}]}"#)
            .unwrap();
        assert!(r.binary_data_output);
        let out = &r.outputs.unwrap()[0];
        assert_eq!((out.binary, out.classification), (false, Some(3)));
        let e = dec(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":-8}}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("non-negative integer"), "{e}");
    }

    #[test]
    fn element_limit_holds_even_when_the_shape_lies() {
        let many = format!("[{}]", vec!["1"; 1500].join(","));
        let body =
            format!(r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":{many}}}]}}"#);
        let e = dec(&body).unwrap_err();
        assert!(e.to_string().contains("more than 1000 elements"), "{e}");
    }

    #[test]
    fn binary_extension_inputs() {
        let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"y","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}]}"#;
        let mut bin = Vec::new();
        bin.extend_from_slice(&1.5f32.to_le_bytes());
        bin.extend_from_slice(&(-2f32).to_le_bytes());
        bin.extend_from_slice(&3u32.to_le_bytes());
        bin.extend_from_slice(b"abc");
        let r = decode_request(json, &bin, &L).unwrap();
        assert_eq!(r.inputs[0].data, Elements::F32(vec![1.5, -2.0]));
        assert_eq!(r.inputs[1].data, Elements::Bytes(vec![b"abc".to_vec()]));
        // Truncated payload.
        let e = decode_request(json, &bin[..10], &L).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // Extra bytes.
        let mut more = bin.clone();
        more.push(0);
        assert!(matches!(
            decode_request(json, &more, &L),
            Err(KserveError::Invalid(_))
        ));
        // NaN in binary FP32.
        let nan = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let e = decode_request(nan, &f32::NAN.to_le_bytes(), &L).unwrap_err();
        assert!(e.to_string().contains("NaN"), "{e}");
    }

    #[test]
    fn split_body_checks_the_header() {
        assert_eq!(
            split_body(b"abcdef", Some("2")).unwrap(),
            (&b"ab"[..], &b"cdef"[..])
        );
        assert!(split_body(b"abc", Some("9")).is_err());
        assert!(split_body(b"abc", Some("x")).is_err());
    }

    #[test]
    fn depth_scan_ignores_brackets_in_strings() {
        assert_eq!(json_depth(br#"{"a":"[[[[\"[[["}"#), 1);
        assert_eq!(json_depth(b"[[1],[2,[3]]]"), 3);
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(json in proptest::collection::vec(any::<u8>(), 0..400), bin in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_request(&json, &bin, &L);
        }

        #[test]
        fn arbitrary_inputs_in_valid_envelopes_never_panic(dt in "(FP32|INT8|UINT8|BYTES|INT64)", shape in proptest::collection::vec(-2i64..6, 0..4), data in "[\\[\\]0-9.,e\"a-]{0,60}") {
            let body = format!(r#"{{"inputs":[{{"name":"x","shape":{shape:?},"datatype":"{dt}","data":{data}}}]}}"#);
            let _ = dec(&body);
        }
    }
}
