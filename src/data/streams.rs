//! Streams: sealed sets of chat examples with a deterministic train/eval split,
//! stored as `streams/<id>/{train,eval}.jsonl` (one `{"messages": [...]}` per
//! line) and a row in `streams`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::StreamsConfig;
use lorastream_ml::Message;
use lorastream_store::{
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
    #[error(
        "{count} examples are too few for a stream: it needs at least {needed} \
         ([streams] min_eval_examples for the eval split, and one to train on)"
    )]
    TooSmall { count: usize, needed: usize },
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

/// How many of `n` examples a stream holds out for evaluation: exactly
/// round(eval_fraction × n), at least `min_eval_examples`. `None` when `n` is
/// too small for that and one example left to train on: the stream waits.
pub fn eval_count(n: usize, cfg: &StreamsConfig) -> Option<usize> {
    let k = ((cfg.eval_fraction * n as f64).round() as usize).max(cfg.min_eval_examples.max(1));
    (n > k).then_some(k)
}

/// The smallest stream [`eval_count`] accepts.
pub fn min_stream_size(cfg: &StreamsConfig) -> usize {
    (1..)
        .find(|&n| eval_count(n, cfg).is_some())
        .unwrap_or(usize::MAX)
}

/// The position of each example in hash order: the first [`eval_count`] of
/// that order are the eval split, so the split does not depend on the order
/// examples arrived in.
fn hash_order(messages: &[Vec<Message>]) -> Vec<usize> {
    let keys: Vec<String> = messages
        .iter()
        .map(|m| content_hash(&m.iter().map(|x| x.content.as_str()).collect::<Vec<_>>()))
        .collect();
    let mut order: Vec<usize> = (0..messages.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]).then(a.cmp(&b)));
    order
}

/// Splits `messages` into (train, eval) indexes; `None` when too few.
pub fn split(messages: &[Vec<Message>], cfg: &StreamsConfig) -> Option<(Vec<usize>, Vec<usize>)> {
    let k = eval_count(messages.len(), cfg)?;
    let order = hash_order(messages);
    let mut eval = order[..k].to_vec();
    let mut train = order[k..].to_vec();
    eval.sort_unstable();
    train.sort_unstable();
    Some((train, eval))
}

fn write_jsonl(path: &Path, examples: &[serde_json::Value]) -> std::io::Result<()> {
    lorastream_base::fsutil::write_atomic_with(path, |w| {
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
    cfg: &StreamsConfig,
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
    Ok(seal_rows(store, state_dir, name, &rows, cfg)?.id)
}

/// [`seal`] for rows already read.
fn seal_rows(
    store: &Store,
    state_dir: &Path,
    name: &str,
    rows: &[ExampleRow],
    cfg: &StreamsConfig,
) -> Result<StreamRow, StreamError> {
    let messages = rows
        .iter()
        .map(|r| serde_json::from_value::<Vec<Message>>(r.messages.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::Json)?;
    let (train, eval) = split(&messages, cfg).ok_or(StreamError::TooSmall {
        count: rows.len(),
        needed: min_stream_size(cfg),
    })?;
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
    cfg: &StreamsConfig,
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
    if eval_count(new.len(), cfg).is_none() {
        return Err(StreamError::TooSmall {
            count: new.len(),
            needed: min_stream_size(cfg),
        });
    }
    let id = seal(store, state_dir, name, &new, cfg)?;
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
    cfg: &StreamsConfig,
    force: bool,
) -> Result<Vec<StreamRow>, StreamError> {
    let mut sealed = Vec::new();
    let needed = min_stream_size(cfg);
    loop {
        let ready = store.count_examples(ExampleState::Ready)? as usize;
        if ready == 0 || (!force && ready < cfg.min_examples.max(1)) {
            break;
        }
        if ready < needed {
            tracing::info!(
                ready,
                needed,
                "too few examples for a stream's eval split; waiting for more"
            );
            break;
        }
        let rows = store.examples_in_state(ExampleState::Ready, cfg.max_examples.max(1))?;
        let ids: Vec<i64> = rows.iter().map(|e| e.id).collect();
        let name = stream_name(&store.example_labels(&ids)?);
        let stream = seal_rows(store, state_dir, &name, &rows, cfg)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(fraction: f64, min: usize) -> StreamsConfig {
        StreamsConfig {
            eval_fraction: fraction,
            min_eval_examples: min,
            ..StreamsConfig::default()
        }
    }

    #[test]
    fn the_eval_split_is_exact_big_enough_and_stable() {
        let c = cfg(0.1, 8);
        assert_eq!(eval_count(90, &c), Some(9), "round(0.1 × 90)");
        assert_eq!(eval_count(40, &c), Some(8), "at least min_eval_examples");
        assert_eq!(eval_count(8, &c), None, "nothing left to train on: wait");
        assert_eq!(eval_count(1, &c), None);
        assert_eq!(min_stream_size(&c), 9);
        assert_eq!(eval_count(200, &cfg(0.2, 8)), Some(40));
        let ex: Vec<Vec<Message>> = (0..30)
            .map(|i| {
                vec![
                    Message::new("user", &format!("q{i}")),
                    Message::new("assistant", "a"),
                ]
            })
            .collect();
        let (train, eval) = split(&ex, &c).unwrap();
        assert_eq!((train.len(), eval.len()), (22, 8));
        // The same examples in another order: the same examples are held out.
        let mut rev = ex.clone();
        rev.reverse();
        let (_, eval_rev) = split(&rev, &c).unwrap();
        let held = |v: &[Vec<Message>], idx: &[usize]| {
            let mut s: Vec<String> = idx.iter().map(|&i| v[i][0].content.clone()).collect();
            s.sort();
            s
        };
        assert_eq!(held(&ex, &eval), held(&rev, &eval_rev));
    }
}
