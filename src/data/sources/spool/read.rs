//! Reading a dropped file one row at a time — a JSON array (or an object with
//! a `rows`, `data` or `items` array), JSONL, or CSV with a header — so a file
//! of any size is read in constant memory (one row at a time).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::{SourceConfig, SpoolFormat};

/// One row: where it is in the file (element index, line or row number, as
/// the record's external id says) and its fields.
pub struct Row {
    pub at: String,
    pub fields: Map<String, Value>,
}

/// Why a dropped file cannot be used (written beside it in `failed/`).
#[derive(Debug, thiserror::Error)]
pub enum BadFile {
    #[error("file is {size} bytes, over max_file_bytes ({max})")]
    TooLarge { size: u64, max: u64 },
    #[error("unknown file type {0:?}: expected .json, .jsonl, .ndjson or .csv (or set `format`)")]
    UnknownType(String),
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("not UTF-8 text (line {line}, byte {byte})")]
    NotUtf8 { line: u64, byte: u64 },
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("JSON is an object without a `rows`, `data` or `items` array")]
    NoRowsArray,
    #[error("JSON is neither an array nor an object")]
    NotArrayOrObject,
    #[error("element {index} is not an object but {kind}")]
    ElementNotObject { index: usize, kind: &'static str },
    #[error("line {line}: not an object but {kind}")]
    LineNotObject { line: u64, kind: &'static str },
    #[error("line {line}: invalid JSON: {source}")]
    LineJson {
        line: u64,
        source: serde_json::Error,
    },
    #[error("CSV header: {0}")]
    CsvHeader(csv::Error),
    #[error("no column `{key}` ([sources.fields] question); columns are: {}", columns.join(", "))]
    NoColumn { key: String, columns: Vec<String> },
    #[error("CSV row {row}: {source}")]
    CsvRow { row: u64, source: csv::Error },
    #[error("no records in the file")]
    Empty,
    #[error("no record has the question field `{key}` ([sources.fields] question); fields found: {}", found.join(", "))]
    NoQuestionField { key: String, found: Vec<String> },
}

/// The source's `format`, else the one the extension names.
pub fn format_of(path: &Path, src: &SourceConfig) -> Result<SpoolFormat, BadFile> {
    match src.spool_format() {
        SpoolFormat::Auto => {
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            match ext.as_str() {
                "json" => Ok(SpoolFormat::Json),
                "jsonl" | "ndjson" => Ok(SpoolFormat::Jsonl),
                "csv" => Ok(SpoolFormat::Csv),
                other => Err(BadFile::UnknownType(other.to_string())),
            }
        }
        f => Ok(f),
    }
}

/// Reads the whole file once without keeping it: the number of rows, or why
/// the file cannot be used (also when no row has the question field).
pub fn validate(path: &Path, format: SpoolFormat, question: &str) -> Result<u64, BadFile> {
    let (mut n, mut has_question) = (0u64, false);
    let mut seen: Vec<String> = Vec::new();
    for_each_row(path, format, question, &mut |row| {
        n += 1;
        if !has_question {
            has_question = row.fields.contains_key(question);
            for k in row.fields.keys() {
                if seen.len() < 20 && !seen.contains(k) {
                    seen.push(k.clone());
                }
            }
        }
        ControlFlow::Continue(())
    })?;
    if n == 0 {
        return Err(BadFile::Empty);
    }
    if !has_question {
        seen.sort();
        return Err(BadFile::NoQuestionField {
            key: question.to_string(),
            found: seen,
        });
    }
    Ok(n)
}

/// Calls `each` with every row in file order until it breaks; stops at the
/// first problem. A UTF-8 byte-order mark is skipped.
pub fn for_each_row(
    path: &Path,
    format: SpoolFormat,
    question: &str,
    each: &mut dyn FnMut(Row) -> ControlFlow<()>,
) -> Result<(), BadFile> {
    let rd = BufReader::with_capacity(1 << 16, File::open(path).map_err(BadFile::Read)?);
    rows(rd, format, question, each)
}

/// [`for_each_row`] over any reader (the fuzz tests feed bytes).
pub fn rows(
    mut rd: impl BufRead,
    format: SpoolFormat,
    question: &str,
    each: &mut dyn FnMut(Row) -> ControlFlow<()>,
) -> Result<(), BadFile> {
    if rd
        .fill_buf()
        .map_err(BadFile::Read)?
        .starts_with(b"\xEF\xBB\xBF")
    {
        rd.consume(3);
    }
    match format {
        SpoolFormat::Json => json_rows(rd, each),
        SpoolFormat::Jsonl => jsonl_rows(rd, each),
        _ => csv_rows(rd, question, each),
    }
}

fn jsonl_rows(
    mut rd: impl BufRead,
    each: &mut dyn FnMut(Row) -> ControlFlow<()>,
) -> Result<(), BadFile> {
    let (mut line, mut n, mut offset) = (Vec::new(), 0u64, 0u64);
    loop {
        line.clear();
        let got = rd.read_until(b'\n', &mut line).map_err(BadFile::Read)?;
        if got == 0 {
            return Ok(());
        }
        n += 1;
        let text = std::str::from_utf8(&line).map_err(|e| BadFile::NotUtf8 {
            line: n,
            byte: offset + e.valid_up_to() as u64,
        })?;
        offset += got as u64;
        if text.trim().is_empty() {
            continue;
        }
        let fields = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(o)) => o,
            Ok(other) => {
                return Err(BadFile::LineNotObject {
                    line: n,
                    kind: json_kind(&other),
                });
            }
            Err(source) => return Err(BadFile::LineJson { line: n, source }),
        };
        if each(Row {
            at: n.to_string(),
            fields,
        })
        .is_break()
        {
            return Ok(());
        }
    }
}

/// CSV with a header row; every field is kept as text. Row numbers are data
/// rows (1 = the first after the header).
fn csv_rows(
    rd: impl BufRead,
    question: &str,
    each: &mut dyn FnMut(Row) -> ControlFlow<()>,
) -> Result<(), BadFile> {
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(rd);
    let headers = rd.headers().map_err(BadFile::CsvHeader)?.clone();
    if !headers.iter().any(|h| h == question) {
        return Err(BadFile::NoColumn {
            key: question.to_string(),
            columns: headers.iter().map(str::to_string).collect(),
        });
    }
    let mut rec = csv::StringRecord::new();
    let mut row = 0u64;
    loop {
        match rd.read_record(&mut rec) {
            Ok(false) => return Ok(()),
            Ok(true) => row += 1,
            Err(e) => {
                return Err(match e.kind() {
                    csv::ErrorKind::Utf8 { pos: Some(p), err } => BadFile::NotUtf8 {
                        line: p.line(),
                        byte: p.byte() + err.valid_up_to() as u64,
                    },
                    _ => BadFile::CsvRow {
                        row: row + 1,
                        source: e,
                    },
                });
            }
        }
        let fields: Map<String, Value> = headers
            .iter()
            .zip(rec.iter())
            .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
            .collect();
        if each(Row {
            at: row.to_string(),
            fields,
        })
        .is_break()
        {
            return Ok(());
        }
    }
}

/// A JSON array of objects, or an object with such an array under `rows`,
/// `data` or `items` (the first of them that is an array); elements may be
/// wrapped as `{"row": {...}}`, as the datasets-server writes them. Parsed
/// element by element.
fn json_rows(
    rd: impl BufRead,
    each: &mut dyn FnMut(Row) -> ControlFlow<()>,
) -> Result<(), BadFile> {
    let mut walk = Walk {
        each,
        problem: None,
        stopped: false,
        found: false,
    };
    let mut de = serde_json::Deserializer::from_reader(rd);
    let parsed = de.deserialize_any(Top(&mut walk));
    if let Some(p) = walk.problem {
        return Err(p);
    }
    if walk.stopped {
        return Ok(());
    }
    parsed.map_err(BadFile::Json)?;
    de.end().map_err(BadFile::Json)
}

/// The state of one JSON walk: the callback, and why it stopped early.
struct Walk<'a> {
    each: &'a mut dyn FnMut(Row) -> ControlFlow<()>,
    problem: Option<BadFile>,
    stopped: bool,
    found: bool,
}

impl Walk<'_> {
    /// Streams the elements of the rows array.
    fn elements<'de, A: SeqAccess<'de>>(&mut self, mut seq: A) -> Result<(), A::Error> {
        self.found = true;
        let mut index = 0;
        while let Some(item) = seq.next_element::<Value>()? {
            let item = match item {
                Value::Object(mut o)
                    if o.len() <= 3 && o.get("row").is_some_and(Value::is_object) =>
                {
                    o.remove("row").unwrap_or_default()
                }
                other => other,
            };
            let Value::Object(fields) = item else {
                self.problem = Some(BadFile::ElementNotObject {
                    index,
                    kind: json_kind(&item),
                });
                return Err(de::Error::custom("stopped"));
            };
            if (self.each)(Row {
                at: index.to_string(),
                fields,
            })
            .is_break()
            {
                self.stopped = true;
                return Err(de::Error::custom("stopped"));
            }
            index += 1;
        }
        Ok(())
    }
}

/// The document: an array of rows, or an object holding one.
struct Top<'w, 'a>(&'w mut Walk<'a>);

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of objects, or an object with a `rows`, `data` or `items` array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.0.elements(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if !self.0.found && ["rows", "data", "items"].contains(&key.as_str()) {
                map.next_value_seed(RowsArray(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !self.0.found {
            self.0.problem = Some(BadFile::NoRowsArray);
        }
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.not_rows()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.not_rows()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.not_rows()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.not_rows()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.not_rows()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_rows()
    }
}

impl Top<'_, '_> {
    fn not_rows<E: de::Error>(self) -> Result<(), E> {
        self.0.problem = Some(BadFile::NotArrayOrObject);
        Ok(())
    }
}

/// The value of a `rows`/`data`/`items` key: streamed when it is an array,
/// skipped otherwise.
struct RowsArray<'w, 'a>(&'w mut Walk<'a>);

impl<'de> DeserializeSeed<'de> for RowsArray<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowsArray<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.0.elements(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
