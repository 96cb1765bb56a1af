//! GGUF files (llama.cpp's format, versions 2 and 3): the header, metadata and
//! tensor table are parsed here; tensor data is read on demand and de-quantized
//! by [`quant`]; [`import`] turns a file into a Hugging Face model directory
//! (config, safetensors, tokenizer, chat template) that the rest of `ml` loads.
//!
//! Layout: `GGUF` magic, version u32, tensor count u64, metadata count u64,
//! metadata (key string, type u32, value), tensor infos (name, dims, type,
//! offset), padding to `general.alignment` (32 by default), tensor data.

pub mod import;
pub mod lora;
pub mod quant;
mod rope_freqs;
mod vocab;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub use quant::GgmlType;

/// What is wrong with a GGUF file; always shown with the file's path ([`GgufError`]).
#[derive(Debug, thiserror::Error)]
pub enum GgufProblem {
    #[error("not a GGUF file (magic {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    UnsupportedVersion(u32),
    #[error("truncated: the file ends inside {0}")]
    Truncated(String),
    #[error("metadata `{key}`: unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("{0}")]
    Invalid(String),
    #[error("tensor {tensor}: unknown or unsupported ggml type {type_id} ({name})")]
    UnsupportedType {
        tensor: String,
        type_id: u32,
        name: &'static str,
    },
    #[error("tensor {tensor}: data at {start}..{end} is past the end of the file ({len} bytes)")]
    DataPastEnd {
        tensor: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("metadata `{0}` is missing or has the wrong type")]
    MissingKey(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct GgufError {
    pub path: PathBuf,
    pub problem: GgufProblem,
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` varies fastest (the row length).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute position of the data in the file.
    pub start: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The shape as PyTorch writes it (slowest dimension first).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file: metadata and tensor table; data is read on demand.
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    file: File,
}

/// Refuses counts no real file has, before allocating for them.
const MAX_COUNT: u64 = 1 << 28;

struct Reader<R> {
    r: R,
    pos: u64,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>, GgufProblem> {
        if n > MAX_COUNT {
            return Err(GgufProblem::Invalid(format!(
                "{}: length {n} is not plausible",
                what()
            )));
        }
        let mut buf = vec![0u8; n as usize];
        self.r.read_exact(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => GgufProblem::Truncated(what()),
            _ => GgufProblem::Io(e),
        })?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufProblem> {
        let v = self.bytes(N as u64, what)?;
        Ok(v.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufProblem> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufProblem> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufProblem> {
        let n = self.u64(what)?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b)
            .map_err(|_| GgufProblem::Invalid(format!("{}: string is not UTF-8", what())))
    }

    fn value(&mut self, type_id: u32, key: &str) -> Result<Value, GgufProblem> {
        let what = || format!("the value of `{key}`");
        Ok(match type_id {
            0 => Value::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => Value::Bool(self.array::<1>(&what)?[0] != 0),
            8 => Value::Str(self.string(&what)?),
            9 => {
                let item = self.u32(&what)?;
                let n = self.u64(&what)?;
                if n > MAX_COUNT {
                    return Err(GgufProblem::Invalid(format!(
                        "`{key}`: array of {n} items is not plausible"
                    )));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item, key)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            t => {
                return Err(GgufProblem::UnknownValueType {
                    key: key.to_string(),
                    type_id: t,
                });
            }
        })
    }
}

impl<R: Read> Reader<R> {
    /// Magic, version, and the tensor and metadata counts.
    fn header(&mut self) -> Result<(u32, u64, u64), GgufProblem> {
        let what = || "the header".to_string();
        let magic: [u8; 4] = self.array(&what)?;
        if &magic != b"GGUF" {
            return Err(GgufProblem::BadMagic(magic));
        }
        let version = self.u32(&what)?;
        if !(2..=3).contains(&version) {
            return Err(GgufProblem::UnsupportedVersion(version));
        }
        let n_tensors = self.u64(&what)?;
        let n_kv = self.u64(&what)?;
        if n_tensors > MAX_COUNT || n_kv > MAX_COUNT {
            return Err(GgufProblem::Invalid(format!(
                "header claims {n_tensors} tensors and {n_kv} metadata entries"
            )));
        }
        Ok((version, n_tensors, n_kv))
    }

    /// The `i`th entry of the tensor table, as written.
    fn tensor_info(&mut self, i: u64) -> Result<RawTensor, GgufProblem> {
        let name = self.string(&|| format!("tensor info {i}"))?;
        let what = || format!("the info of tensor {name}");
        let n_dims = self.u32(&what)?;
        if n_dims == 0 || n_dims > 4 {
            return Err(GgufProblem::Invalid(format!(
                "tensor {name}: {n_dims} dimensions (1 to 4 allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&what)?);
        }
        let type_id = self.u32(&what)?;
        let offset = self.u64(&what)?;
        Ok(RawTensor {
            name,
            dims,
            type_id,
            offset,
        })
    }
}

/// `general.alignment`, 32 when absent.
fn alignment(metadata: &BTreeMap<String, Value>) -> Result<u64, GgufProblem> {
    match metadata.get("general.alignment") {
        None => Ok(32),
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => Ok(a),
            _ => Err(GgufProblem::Invalid(format!(
                "general.alignment {v:?} is not a power of two"
            ))),
        },
    }
}

/// A tensor table entry before its type and place in the file are checked.
struct RawTensor {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    offset: u64,
}

impl RawTensor {
    /// Checks the type, the alignment and that the data lies inside a file
    /// of `len` bytes whose data section starts at `data_start`.
    fn place(self, data_start: u64, alignment: u64, len: u64) -> Result<TensorInfo, GgufProblem> {
        let RawTensor {
            name,
            dims,
            type_id,
            offset,
        } = self;
        let ggml_type = GgmlType::from_id(type_id).ok_or(GgufProblem::UnsupportedType {
            tensor: name.clone(),
            type_id,
            name: quant::type_name(type_id),
        })?;
        if offset % alignment != 0 {
            return Err(GgufProblem::Invalid(format!(
                "tensor {name}: offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0)
            .ok_or_else(|| GgufProblem::Invalid(format!("tensor {name}: dims {dims:?}")))?;
        let block = ggml_type.block_len();
        if dims[0] % block != 0 {
            return Err(GgufProblem::Invalid(format!(
                "tensor {name}: row length {} is not a multiple of {}'s block of {block}",
                dims[0],
                ggml_type.name()
            )));
        }
        let n_bytes = numel / block * ggml_type.block_bytes();
        let start = data_start + offset;
        let end = start.saturating_add(n_bytes);
        if end > len {
            return Err(GgufProblem::DataPastEnd {
                tensor: name,
                start,
                end,
                len,
            });
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            start,
            n_bytes,
        })
    }
}

impl Gguf {
    /// Parses the header, metadata and tensor table, and checks that every
    /// tensor's type is known and its data lies inside the file.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        Self::parse(path).map_err(|problem| GgufError {
            path: path.to_owned(),
            problem,
        })
    }

    fn parse(path: &Path) -> Result<Gguf, GgufProblem> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut r = Reader {
            r: BufReader::with_capacity(1 << 20, &file),
            pos: 0,
        };
        let (version, n_tensors, n_kv) = r.header()?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&|| format!("metadata entry {i}"))?;
            let t = r.u32(&|| format!("metadata `{key}`"))?;
            let v = r.value(t, &key)?;
            metadata.insert(key, v);
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            raw.push(r.tensor_info(i)?);
        }
        let alignment = alignment(&metadata)?;
        let data_start = r.pos.div_ceil(alignment) * alignment;
        drop(r);
        let tensors = raw
            .into_iter()
            .map(|t| t.place(data_start, alignment, len))
            .collect::<Result<_, _>>()?;
        Ok(Gguf {
            path: path.to_owned(),
            version,
            metadata,
            tensors,
            file,
        })
    }

    fn problem(&self, problem: GgufProblem) -> GgufError {
        GgufError {
            path: self.path.clone(),
            problem,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value, converted by `f`.
    pub fn need<'a, T>(
        &'a self,
        key: &str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T, GgufError> {
        self.get(key)
            .and_then(f)
            .ok_or_else(|| self.problem(GgufProblem::MissingKey(key.to_string())))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor.
    pub fn read_raw(&self, info: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        let mut f = &self.file;
        let mut buf = vec![0u8; info.n_bytes as usize];
        f.seek(SeekFrom::Start(info.start))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    self.problem(GgufProblem::Truncated(format!("tensor {}", info.name)))
                }
                _ => self.problem(GgufProblem::Io(e)),
            })?;
        Ok(buf)
    }

    /// A tensor's values as f32, in ggml order (row-major with `dims[0]` fastest).
    pub fn read_f32(&self, info: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let raw = self.read_raw(info)?;
        Ok(quant::dequantize(info.ggml_type, &raw))
    }

    fn unsupported(&self, msg: String) -> GgufError {
        self.problem(GgufProblem::Unsupported(msg))
    }
}
