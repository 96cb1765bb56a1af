//! `spool`: a directory where exports are dropped: JSON arrays, JSONL, or CSV
//! (with quoted multi-line fields). Files are taken oldest first; a file
//! modified within `settle_secs` may still be being written and is left for
//! the next run. A file's records are stored in one transaction, then the file
//! moves to `done/`; a file that cannot be read as its format moves to
//! `failed/` with a `<name>.reason` file beside it, and stores nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use super::{FetchReport, Record, SourceError};
use crate::config::{SourceConfig, SpoolFormat};
use crate::store::Store;

pub fn run(
    store: &Store,
    state_dir: &Path,
    src: &SourceConfig,
    report: &mut FetchReport,
) -> Result<(), SourceError> {
    let dir = src.spool_dir(state_dir);
    let io = |what: String| move |source| SourceError::Io { what, source };
    if src.dir.is_none() {
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    let settle = Duration::from_secs(src.settle_secs());
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(&dir).map_err(io(format!("reading spool {}", dir.display())))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        if !meta.is_file() || skipped_name(&name) {
            continue;
        }
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let age = SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        if age < settle {
            tracing::debug!(source = %src.name, file = %name, "file changed {age:?} ago; left for the next run");
            continue;
        }
        files.push((modified, name, path));
    }
    files.sort();
    for (_, name, path) in files {
        match read_file(&path, src) {
            Ok(records) => {
                report.commit(store, &src.name, &records, |_| Ok(()))?;
                let to = move_to(&dir, "done", &path, &name)
                    .map_err(io(format!("moving {} to done/", path.display())))?;
                report.files_done += 1;
                tracing::info!(source = %src.name, file = %name, records = records.len(), done = %to.display(), "spool file ingested");
            }
            Err(reason) => {
                let to = move_to(&dir, "failed", &path, &name)
                    .map_err(io(format!("moving {} to failed/", path.display())))?;
                let reason_path = to.with_file_name(format!(
                    "{}.reason",
                    to.file_name().unwrap_or_default().to_string_lossy()
                ));
                crate::fsutil::write_atomic(&reason_path, format!("{reason}\n").as_bytes())
                    .map_err(io(format!("writing {}", reason_path.display())))?;
                report.files_failed += 1;
                tracing::warn!(source = %src.name, file = %name, reason = %reason, "spool file refused; moved to failed/");
            }
        }
    }
    Ok(())
}

/// Hidden files, partial downloads and our own `.reason` files are not inputs.
fn skipped_name(name: &str) -> bool {
    name.starts_with('.')
        || [
            ".tmp",
            ".part",
            ".partial",
            ".crdownload",
            ".reason",
            ".swp",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

/// Moves `path` into `dir/sub/`, adding a suffix if the name is taken.
fn move_to(dir: &Path, sub: &str, path: &Path, name: &str) -> std::io::Result<PathBuf> {
    let target_dir = dir.join(sub);
    std::fs::create_dir_all(&target_dir)?;
    let mut to = target_dir.join(name);
    let mut n = 1;
    while to.exists() {
        to = target_dir.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &to)?;
    crate::fsutil::sync_dir(&target_dir)?;
    Ok(to)
}

/// Why a dropped file cannot be used (written beside it in `failed/`).
#[derive(Debug, thiserror::Error)]
pub enum BadFile {
    #[error("unknown file type {0:?}: expected .json, .jsonl, .ndjson or .csv (or set `format`)")]
    UnknownType(String),
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("not UTF-8 text (line {line}, byte {byte})")]
    NotUtf8 { line: usize, byte: usize },
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("JSON is an object without a `rows`, `data` or `items` array")]
    NoRowsArray,
    #[error("JSON is neither an array nor an object")]
    NotArrayOrObject,
    #[error("element {index} is not an object but {kind}")]
    ElementNotObject { index: usize, kind: &'static str },
    #[error("line {line}: not an object but {kind}")]
    LineNotObject { line: usize, kind: &'static str },
    #[error("line {line}: invalid JSON: {source}")]
    LineJson {
        line: usize,
        source: serde_json::Error,
    },
    #[error("CSV header: {0}")]
    CsvHeader(csv::Error),
    #[error("no column `{key}` ([sources.fields] question); columns are: {}", columns.join(", "))]
    NoColumn { key: String, columns: Vec<String> },
    #[error("CSV row {row}: {source}")]
    CsvRow { row: usize, source: csv::Error },
    #[error("no records in the file")]
    Empty,
    #[error("no record has the question field `{key}` ([sources.fields] question); fields found: {}", found.join(", "))]
    NoQuestionField { key: String, found: Vec<String> },
}

/// The records of one file, or why the file cannot be used.
pub fn read_file(path: &Path, src: &SourceConfig) -> Result<Vec<Record>, BadFile> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let format = match src.spool_format() {
        SpoolFormat::Auto => {
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            match ext.as_str() {
                "json" => SpoolFormat::Json,
                "jsonl" | "ndjson" => SpoolFormat::Jsonl,
                "csv" => SpoolFormat::Csv,
                other => return Err(BadFile::UnknownType(other.to_string())),
            }
        }
        f => f,
    };
    let bytes = std::fs::read(path).map_err(BadFile::Read)?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let rows: Rows = match format {
        SpoolFormat::Json => json_rows(bytes)?,
        SpoolFormat::Jsonl => jsonl_rows(bytes)?,
        _ => csv_rows(bytes, &src.fields.question)?,
    };
    if rows.is_empty() {
        return Err(BadFile::Empty);
    }
    let key = &src.fields.question;
    if !rows.iter().any(|(_, o)| o.contains_key(key)) {
        let mut seen: Vec<&String> = rows.iter().flat_map(|(_, o)| o.keys()).collect();
        seen.sort();
        seen.dedup();
        return Err(BadFile::NoQuestionField {
            key: key.clone(),
            found: seen.iter().take(20).map(|s| s.to_string()).collect(),
        });
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(|(at, obj)| {
            let mut r = Record::from_object(&obj, &src.fields);
            r.external_id = Some(format!("{name}#{at}"));
            r.meta.insert("label".into(), json!(stem));
            r.meta.insert("file".into(), json!(name));
            r
        })
        .collect())
}

/// (where in the file: index, line or row number; the record's fields).
type Rows = Vec<(String, Map<String, Value>)>;

fn utf8(bytes: &[u8]) -> Result<&str, BadFile> {
    std::str::from_utf8(bytes).map_err(|e| BadFile::NotUtf8 {
        line: bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1,
        byte: e.valid_up_to(),
    })
}

/// A JSON array of objects, or an object with such an array under `rows` or
/// `data` (rows may be wrapped as `{"row": {...}}`, as the datasets-server writes).
fn json_rows(bytes: &[u8]) -> Result<Rows, BadFile> {
    let v: Value = serde_json::from_str(utf8(bytes)?).map_err(BadFile::Json)?;
    let items = match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match ["rows", "data", "items"]
            .iter()
            .find_map(|k| o.remove(*k).filter(Value::is_array))
        {
            Some(Value::Array(a)) => a,
            _ => return Err(BadFile::NoRowsArray),
        },
        _ => return Err(BadFile::NotArrayOrObject),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let item = match item {
                Value::Object(mut o)
                    if o.len() <= 3 && o.get("row").is_some_and(Value::is_object) =>
                {
                    o.remove("row").unwrap_or_default()
                }
                other => other,
            };
            match item {
                Value::Object(o) => Ok((i.to_string(), o)),
                other => Err(BadFile::ElementNotObject {
                    index: i,
                    kind: json_kind(&other),
                }),
            }
        })
        .collect()
}

fn jsonl_rows(bytes: &[u8]) -> Result<Rows, BadFile> {
    let mut out = Vec::new();
    for (i, line) in utf8(bytes)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) => out.push(((i + 1).to_string(), o)),
            Ok(other) => {
                return Err(BadFile::LineNotObject {
                    line: i + 1,
                    kind: json_kind(&other),
                });
            }
            Err(source) => {
                return Err(BadFile::LineJson {
                    line: i + 1,
                    source,
                });
            }
        }
    }
    Ok(out)
}

/// CSV with a header row; every field is kept as text. Row numbers are data
/// rows (1 = the first after the header).
fn csv_rows(bytes: &[u8], question_key: &str) -> Result<Rows, BadFile> {
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(utf8(bytes)?.as_bytes());
    let headers = rd.headers().map_err(BadFile::CsvHeader)?.clone();
    if !headers.iter().any(|h| h == question_key) {
        return Err(BadFile::NoColumn {
            key: question_key.to_string(),
            columns: headers.iter().map(str::to_string).collect(),
        });
    }
    let mut out = Vec::new();
    for (i, rec) in rd.records().enumerate() {
        let rec = rec.map_err(|source| BadFile::CsvRow { row: i + 1, source })?;
        let obj: Map<String, Value> = headers
            .iter()
            .zip(rec.iter())
            .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
            .collect();
        out.push(((i + 1).to_string(), obj));
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceKind;

    fn src() -> SourceConfig {
        SourceConfig::new("drops", SourceKind::Spool)
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn formats() {
        let d = tempfile::tempdir().unwrap();
        let csv = write(
            d.path(),
            "a.csv",
            "question,answer\n\"Why?\",\"Line one,\nline \"\"two\"\"\"\nWho?,Me\n",
        );
        let r = read_file(&csv, &src()).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].answer.as_deref(), Some("Line one,\nline \"two\""));
        assert_eq!(r[0].external_id.as_deref(), Some("a.csv#1"));
        assert_eq!(r[0].meta["label"], "a");
        let jl = write(
            d.path(),
            "b.jsonl",
            "{\"question\":\"Q\",\"answer\":\"A\"}\n\n{\"question\":\"Q2\"}\n",
        );
        assert_eq!(read_file(&jl, &src()).unwrap().len(), 2);
        let js = write(
            d.path(),
            "c.json",
            r#"{"rows":[{"row_idx":0,"row":{"question":"Q","answer":"A"}}]}"#,
        );
        assert_eq!(read_file(&js, &src()).unwrap()[0].question, "Q");
    }

    #[test]
    fn bad_files_say_why() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("x.txt", "hello", "unknown file type"),
            ("bad.jsonl", "{\"question\":\"Q\"}\n{oops\n", "line 2"),
            ("arr.json", "[{\"question\":\"Q\"}, 3]", "element 1"),
            ("trunc.json", "[{\"question\":", "invalid JSON"),
            ("cols.csv", "Title,Body\nq,a\n", "no column `question`"),
            ("ragged.csv", "question,answer\nq,a,extra\n", "CSV row 1"),
            ("keys.json", "[{\"title\":\"Q\"}]", "fields found: title"),
            ("empty.json", "[]", "no records"),
        ];
        for (name, text, want) in cases {
            let p = write(d.path(), name, text);
            let err = read_file(&p, &src()).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
        std::fs::write(d.path().join("bin.csv"), b"question,answer\nq,\xff\xfe\n").unwrap();
        let err = read_file(&d.path().join("bin.csv"), &src())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not UTF-8 text (line 2"), "{err}");
    }
}
