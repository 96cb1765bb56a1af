//! `spool`: a directory where exports are dropped: JSON arrays, JSONL, or CSV
//! (with quoted multi-line fields). Files are taken oldest first; a file
//! modified within `settle_secs` may still be being written and is left for
//! the next run. A file over `max_file_bytes`, or one that cannot be read as
//! its format, moves to `failed/` with a `<name>.reason` file beside it and
//! stores nothing.
//!
//! A file is read twice, one row at a time (`read.rs`): a first pass checks it
//! whole, a second stores its records in chunks of [`CHUNK`], each in one
//! transaction with the file's cursor (`spool_files`), so a restart resumes
//! after the last stored chunk instead of reading a large file from the start
//! again. The last chunk commits durably (synchronous FULL) before the file
//! moves to `done/`; both directories are fsynced after the move.

mod read;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::json;

pub use read::{BadFile, Row, for_each_row, format_of, rows, validate};

use super::{FetchReport, Record, SourceError};
use crate::config::SourceConfig;
use lorastream_store::{SpoolFileRow, Store, StoreError};

/// Records stored per transaction.
pub const CHUNK: usize = 1000;

/// A settled file found in the spool.
struct Found {
    name: String,
    path: PathBuf,
    size: u64,
    mtime_ns: i64,
}

/// Why a file was not ingested this run.
enum Skip {
    /// Moved to failed/ with the reason.
    Bad(BadFile),
    /// Left where it is; the run stops (the store or the disk failed).
    Stop(SourceError),
}

impl From<StoreError> for Skip {
    fn from(e: StoreError) -> Self {
        Skip::Stop(e.into())
    }
}

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
    let files = settled_files(&dir, src).map_err(io(format!("reading spool {}", dir.display())))?;
    // Cursors of files that left the spool (moved by a run that then crashed).
    for c in store.spool_files(&src.name)? {
        if !files.iter().any(|f| f.name == c.name) {
            store.finish_spool_file(&src.name, &c.name)?;
        }
    }
    for f in files {
        match ingest(store, src, &f, report) {
            Ok(records) => {
                let to = move_to(&dir, "done", &f.path, &f.name)
                    .map_err(io(format!("moving {:?} to done/", f.path)))?;
                store.finish_spool_file(&src.name, &f.name)?;
                report.files_done += 1;
                tracing::info!(source = %src.name, file = ?f.name, records, done = ?to, "spool file ingested");
            }
            Err(Skip::Bad(reason)) => {
                let to = move_to(&dir, "failed", &f.path, &f.name)
                    .map_err(io(format!("moving {:?} to failed/", f.path)))?;
                let reason_path = to.with_file_name(format!(
                    "{}.reason",
                    to.file_name().unwrap_or_default().to_string_lossy()
                ));
                lorastream_base::fsutil::write_atomic(
                    &reason_path,
                    format!("{reason}\n").as_bytes(),
                )
                .map_err(io(format!("writing {:?}", reason_path)))?;
                store.finish_spool_file(&src.name, &f.name)?;
                report.files_failed += 1;
                tracing::warn!(source = %src.name, file = ?f.name, reason = %reason, "spool file refused; moved to failed/");
            }
            Err(Skip::Stop(e)) => return Err(e),
        }
    }
    Ok(())
}

/// Files old enough to be complete, oldest first.
fn settled_files(dir: &Path, src: &SourceConfig) -> std::io::Result<Vec<Found>> {
    let settle = Duration::from_secs(src.settle_secs());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
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
            tracing::debug!(source = %src.name, file = ?name, "file changed {age:?} ago; left for the next run");
            continue;
        }
        let mtime_ns = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        files.push((modified, name, entry.path(), meta.len(), mtime_ns));
    }
    files.sort();
    Ok(files
        .into_iter()
        .map(|(_, name, path, size, mtime_ns)| Found {
            name,
            path,
            size,
            mtime_ns,
        })
        .collect())
}

/// Stores what is left of one file (all of it, or what follows its cursor);
/// returns how many records the file holds.
fn ingest(
    store: &Store,
    src: &SourceConfig,
    f: &Found,
    report: &mut FetchReport,
) -> Result<u64, Skip> {
    let max = src.max_file_bytes();
    if f.size > max {
        return Err(Skip::Bad(BadFile::TooLarge { size: f.size, max }));
    }
    let format = format_of(&f.path, src).map_err(Skip::Bad)?;
    let question = &src.fields.question;
    let cursor = match store
        .spool_file(&src.name, &f.name)?
        .filter(|c| c.size == f.size as i64 && c.mtime_ns == f.mtime_ns)
    {
        Some(c) => {
            tracing::info!(source = %src.name, file = ?f.name, rows_done = c.rows_done, rows = c.rows_total, "resuming a spool file after its last stored chunk");
            c
        }
        None => {
            let rows_total = validate(&f.path, format, question).map_err(Skip::Bad)? as i64;
            let c = SpoolFileRow {
                source: src.name.clone(),
                name: f.name.clone(),
                size: f.size as i64,
                mtime_ns: f.mtime_ns,
                rows_total,
                rows_done: 0,
            };
            store.start_spool_file(&c)?;
            c
        }
    };
    if cursor.rows_done >= cursor.rows_total {
        // Stored already; only the move to done/ was left.
        return Ok(cursor.rows_total as u64);
    }
    let stem = Path::new(&f.name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut chunk: Vec<Record> = Vec::with_capacity(CHUNK);
    let mut done = cursor.rows_done;
    let mut index = 0i64;
    let mut failed: Option<StoreError> = None;
    for_each_row(&f.path, format, question, &mut |row| {
        index += 1;
        if index <= cursor.rows_done {
            return ControlFlow::Continue(());
        }
        chunk.push(to_record(row, src, &f.name, &stem));
        done = index;
        if chunk.len() == CHUNK
            && done < cursor.rows_total
            && let Err(e) = store_chunk(store, src, &f.name, &mut chunk, done, report)
        {
            failed = Some(e);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })
    .map_err(Skip::Bad)?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    // The file moves right after the last chunk: that commit is durable.
    let last = done.max(cursor.rows_total);
    store.durably(|| store_chunk(store, src, &f.name, &mut chunk, last, report))?;
    Ok(cursor.rows_total as u64)
}

/// Stores `chunk` and moves the file's cursor to `done`, in one transaction.
fn store_chunk(
    store: &Store,
    src: &SourceConfig,
    name: &str,
    chunk: &mut Vec<Record>,
    done: i64,
    report: &mut FetchReport,
) -> Result<(), StoreError> {
    report.commit(store, &src.name, chunk, |s| {
        s.spool_file_progress(&src.name, name, done)
    })?;
    chunk.clear();
    Ok(())
}

/// A row as a record of this source, its external id `<file>#<where>`.
fn to_record(row: Row, src: &SourceConfig, name: &str, stem: &str) -> Record {
    let mut r = Record::from_object(&row.fields, &src.fields);
    r.external_id = Some(format!("{name}#{}", row.at));
    r.meta.insert("label".into(), json!(stem));
    r.meta.insert("file".into(), json!(name));
    r
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

/// Moves `path` into `dir/sub/`, adding a suffix if the name is taken; both
/// directories are fsynced, so the move survives a power loss.
fn move_to(dir: &Path, sub: &str, path: &Path, name: &str) -> std::io::Result<PathBuf> {
    let target_dir = dir.join(sub);
    lorastream_base::fsutil::create_dir_all_durable(&target_dir)?;
    let mut to = target_dir.join(name);
    let mut n = 1;
    while to.exists() {
        to = target_dir.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &to)?;
    lorastream_base::fsutil::sync_dir(&target_dir)?;
    lorastream_base::fsutil::sync_dir(dir)?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceKind;

    fn src() -> SourceConfig {
        SourceConfig::new("drops", SourceKind::Spool)
    }

    /// Every record of a file, or why it cannot be used (the two passes).
    fn read_file(path: &Path, src: &SourceConfig) -> Result<Vec<Record>, BadFile> {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let format = format_of(path, src)?;
        validate(path, format, &src.fields.question)?;
        let mut out = Vec::new();
        for_each_row(path, format, &src.fields.question, &mut |row| {
            out.push(to_record(row, src, &name, &stem));
            ControlFlow::Continue(())
        })?;
        Ok(out)
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
