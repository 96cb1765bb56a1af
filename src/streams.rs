//! Streams: sealed sets of chat examples with a deterministic train/eval split,
//! stored as `streams/<id>/{train,eval}.jsonl` (one `{"messages": [...]}` per
//! line) and a row in `streams`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::ml::Message;
use crate::store::{
    ExampleRow, ExampleState, NewExample, Origin, Split, Store, StoreError, StreamRow, content_hash,
};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: line {line}: {source}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{}: line {line}: no messages", path.display())]
    NoMessages { path: PathBuf, line: usize },
    #[error("{}: no examples", path.display())]
    Empty { path: PathBuf },
    #[error("{}: all {count} examples are already stored; nothing to seal", path.display())]
    AllStored { path: PathBuf, count: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads chat examples from JSONL; a bad line is an error naming its number.
pub fn read_jsonl(path: &Path, limit: usize) -> Result<Vec<Vec<Message>>, StreamError> {
    let text = std::fs::read_to_string(path).map_err(|source| StreamError::Read {
        path: path.to_owned(),
        source,
    })?;
    #[derive(serde::Deserialize)]
    struct Ex {
        messages: Vec<Message>,
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ex: Ex = serde_json::from_str(line).map_err(|source| StreamError::BadLine {
            path: path.to_owned(),
            line: i + 1,
            source,
        })?;
        if ex.messages.is_empty() {
            return Err(StreamError::NoMessages {
                path: path.to_owned(),
                line: i + 1,
            });
        }
        out.push(ex.messages);
        if limit > 0 && out.len() >= limit {
            break;
        }
    }
    if out.is_empty() {
        return Err(StreamError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// True when the example goes to the eval split: a hash of its content below
/// `eval_fraction` of the hash range, so the split does not depend on order.
pub fn is_eval(messages: &[Message], eval_fraction: f64) -> bool {
    let parts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    let h = content_hash(&parts);
    let x = u64::from_str_radix(&h[..16], 16).unwrap_or(0);
    (x as f64 / u64::MAX as f64) < eval_fraction
}

fn write_jsonl(path: &Path, examples: &[serde_json::Value]) -> std::io::Result<()> {
    crate::fsutil::write_atomic_with(path, |w| {
        for m in examples {
            serde_json::to_writer(&mut *w, &json!({ "messages": m }))?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Seals ready examples into a stream: splits them, writes the files, and
/// records the stream in one store transaction.
pub fn seal(
    store: &Store,
    state_dir: &Path,
    name: &str,
    example_ids: &[i64],
    eval_fraction: f64,
) -> Result<i64, StreamError> {
    let rows = example_ids
        .iter()
        .map(|&id| {
            store.example(id)?.ok_or(StoreError::NotFound {
                what: "example",
                id: id.to_string(),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(seal_rows(store, state_dir, name, &rows, eval_fraction)?.id)
}

/// [`seal`] for rows already read.
fn seal_rows(
    store: &Store,
    state_dir: &Path,
    name: &str,
    rows: &[ExampleRow],
    eval_fraction: f64,
) -> Result<StreamRow, StreamError> {
    // Indexes into `rows` of each split.
    let mut train = Vec::new();
    let mut eval = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let messages: Vec<Message> =
            serde_json::from_value(row.messages.clone()).map_err(StoreError::Json)?;
        if is_eval(&messages, eval_fraction) {
            eval.push(i);
        } else {
            train.push(i);
        }
    }
    // Tiny streams still get both splits.
    if eval.is_empty() && train.len() >= 2 {
        eval.extend(train.pop());
    }
    if train.is_empty() && eval.len() >= 2 {
        train.extend(eval.pop());
    }
    let ids = |split: &[usize]| -> Vec<i64> { split.iter().map(|&i| rows[i].id).collect() };
    // What is trained on: condensed answers where the summarizer made them.
    let messages_of = |split: &[usize]| -> Vec<serde_json::Value> {
        split.iter().map(|&i| rows[i].training_messages()).collect()
    };
    let id = store.seal_stream_with(name, &ids(&train), &ids(&eval), |id| {
        let dir = state_dir.join("streams").join(id.to_string());
        write_jsonl(&dir.join("train.jsonl"), &messages_of(&train))?;
        write_jsonl(&dir.join("eval.jsonl"), &messages_of(&eval))?;
        Ok(dir)
    })?;
    Ok(store.stream(id)?.ok_or(StoreError::NotFound {
        what: "stream",
        id: id.to_string(),
    })?)
}

/// `lorastream streams import`: stores each example (deduplicated) and seals
/// the new ones into a stream. Returns the stream id and how many examples were
/// new and duplicate.
pub fn import(
    store: &Store,
    state_dir: &Path,
    file: &Path,
    name: &str,
    eval_fraction: f64,
) -> Result<(i64, usize, usize), StreamError> {
    let examples = read_jsonl(file, 0)?;
    let mut new = Vec::new();
    let mut dup = 0;
    for m in &examples {
        let ins = store.insert_example(&NewExample {
            raw_item_id: None,
            messages: serde_json::to_value(m).map_err(StoreError::Json)?,
            origin: Origin::Import,
            quality: json!({}),
            norm_hash: None,
        })?;
        if ins.is_new() {
            store.mark_example_ready(ins.id(), None)?;
            new.push(ins.id());
        } else {
            dup += 1;
        }
    }
    if new.is_empty() {
        return Err(StreamError::AllStored {
            path: file.to_owned(),
            count: examples.len(),
        });
    }
    let id = seal(store, state_dir, name, &new, eval_fraction)?;
    Ok((id, new.len(), dup))
}

/// A stream's examples of one split, from its files.
pub fn load_split(dir: &Path, split: Split) -> Result<Vec<Vec<Message>>, StreamError> {
    let path = dir.join(format!("{}.jsonl", split.as_str()));
    match read_jsonl(&path, 0) {
        Err(StreamError::Empty { .. }) => Ok(Vec::new()),
        other => other,
    }
}

/// Seals ready examples into streams: while at least `min_examples` are ready
/// (or any, with `force`), the oldest `max_examples` become one stream.
/// Returns the new streams.
pub fn seal_ready(
    store: &Store,
    state_dir: &Path,
    cfg: &crate::config::StreamsConfig,
    force: bool,
) -> Result<Vec<StreamRow>, StreamError> {
    let mut sealed = Vec::new();
    loop {
        let ready = store.count_examples(ExampleState::Ready)? as usize;
        if ready == 0 || (!force && ready < cfg.min_examples.max(1)) {
            break;
        }
        let rows = store.examples_in_state(ExampleState::Ready, cfg.max_examples.max(1))?;
        let ids: Vec<i64> = rows.iter().map(|e| e.id).collect();
        let name = stream_name(&store.example_labels(&ids)?);
        let stream = seal_rows(store, state_dir, &name, &rows, cfg.eval_fraction)?;
        tracing::info!(
            stream = stream.id,
            name = %name,
            train = stream.n_train,
            eval = stream.n_eval,
            "stream sealed"
        );
        sealed.push(stream);
    }
    Ok(sealed)
}

/// A stream is named after where its examples came from: the one label
/// (spool file, dataset, topic), or the first ones joined, in order.
pub fn stream_name(labels: &[String]) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for l in labels {
        if !distinct.contains(&l.as_str()) {
            distinct.push(l);
        }
    }
    match distinct.len() {
        0 => "stream".into(),
        1..=3 => distinct.join(" + "),
        n => format!("{} + {} more", distinct[..2].join(" + "), n - 2),
    }
}
