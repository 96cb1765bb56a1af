//! The replay pool of a training run: a bounded reservoir of each earlier
//! stream's train split (`[train] replay_per_stream`), read lazily line by
//! line so no stream is ever held in memory whole, then `[train]
//! replay_buffer` examples drawn from the reservoirs with weights toward the
//! streams forgotten most recently. A missing or corrupt stream file is logged
//! and skipped.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use crate::learn::spec::ReplaySpec;
use lorastream_ml::Message;
use lorastream_ml::runtime::rng::reservoir;
use lorastream_store::{Split, StreamRow};

/// The pool and where it came from.
#[derive(Debug, Default)]
pub struct Pool {
    pub examples: Vec<Vec<Message>>,
    /// Examples drawn per stream.
    pub drawn: BTreeMap<i64, usize>,
}

/// Up to `cap` examples of a stream's train file, reservoir-sampled while
/// reading; only the kept lines are parsed. Bad lines are skipped (counted).
fn sample_file(path: &Path, cap: usize, seed: u64) -> std::io::Result<(Vec<Vec<Message>>, usize)> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let lines = file
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.trim().is_empty());
    let kept = reservoir(lines, cap, seed);
    #[derive(serde::Deserialize)]
    struct Ex {
        messages: Vec<Message>,
    }
    let mut bad = 0;
    let mut out = Vec::with_capacity(kept.len());
    for line in kept {
        match serde_json::from_str::<Ex>(&line) {
            Ok(ex) if !ex.messages.is_empty() => out.push(ex.messages),
            _ => bad += 1,
        }
    }
    Ok((out, bad))
}

/// Each stream's weight: 1 + its recent forgetting over the limit's size, so
/// a stream forgotten up to the limit is drawn twice as often.
pub fn weights(
    streams: &[i64],
    recent_forgetting: &BTreeMap<i64, f64>,
    max_forgetting: f64,
) -> BTreeMap<i64, f64> {
    let unit = max_forgetting.max(1e-3);
    streams
        .iter()
        .map(|s| {
            let f = recent_forgetting.get(s).copied().unwrap_or(0.0);
            let f = if f.is_finite() { f.max(0.0) } else { 0.0 };
            (*s, 1.0 + (f / unit).min(10.0))
        })
        .collect()
}

/// Splits `total` slots over streams in proportion to their weights, each
/// capped at what its reservoir holds; leftover slots go to the others.
pub fn allocate(
    weights: &BTreeMap<i64, f64>,
    available: &BTreeMap<i64, usize>,
    total: usize,
) -> BTreeMap<i64, usize> {
    let mut out: BTreeMap<i64, usize> = available.keys().map(|s| (*s, 0)).collect();
    let mut left = total.min(available.values().sum());
    while left > 0 {
        let open: Vec<i64> = out
            .iter()
            .filter(|(s, n)| **n < available[*s])
            .map(|(s, _)| *s)
            .collect();
        let sum: f64 = open
            .iter()
            .map(|s| weights.get(s).copied().unwrap_or(1.0))
            .sum();
        let mut given = 0;
        for s in &open {
            let share =
                (left as f64 * weights.get(s).copied().unwrap_or(1.0) / sum).floor() as usize;
            let n = share.min(available[s] - out[s]).min(left - given);
            *out.get_mut(s).expect("present") += n;
            given += n;
        }
        if given == 0 {
            // Rounding left a few: one each to the heaviest open streams.
            let mut by_weight = open.clone();
            let w = |s: &i64| weights.get(s).copied().unwrap_or(1.0);
            by_weight.sort_by(|a, b| w(b).total_cmp(&w(a)));
            for s in by_weight.into_iter().take(left) {
                *out.get_mut(&s).expect("present") += 1;
                given += 1;
            }
        }
        left -= given;
    }
    out
}

/// The replay pool for training a stream after `earlier` streams.
pub fn pool(
    r: &ReplaySpec,
    earlier: &[StreamRow],
    recent_forgetting: &BTreeMap<i64, f64>,
    seed: u64,
) -> Pool {
    if r.buffer == 0 || r.per_stream == 0 {
        return Pool::default();
    }
    let mut reservoirs: BTreeMap<i64, Vec<Vec<Message>>> = BTreeMap::new();
    for s in earlier {
        let path = s.path.join(format!("{}.jsonl", Split::Train.as_str()));
        match sample_file(&path, r.per_stream, seed ^ s.id as u64) {
            Ok((examples, bad)) => {
                if bad > 0 {
                    tracing::warn!(stream = s.id, file = %path.display(), bad, "replay: unreadable lines skipped");
                }
                reservoirs.insert(s.id, examples);
            }
            Err(e) => {
                tracing::warn!(stream = s.id, file = %path.display(), error = %e, "replay: stream file unreadable; skipped")
            }
        }
    }
    let ids: Vec<i64> = reservoirs.keys().copied().collect();
    let w = weights(&ids, recent_forgetting, r.max_forgetting);
    let available: BTreeMap<i64, usize> = reservoirs.iter().map(|(s, v)| (*s, v.len())).collect();
    let drawn = allocate(&w, &available, r.buffer);
    let mut examples = Vec::new();
    for (s, n) in &drawn {
        examples.extend(
            reservoirs
                .remove(s)
                .unwrap_or_default()
                .into_iter()
                .take(*n),
        );
    }
    Pool { examples, drawn }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_favour_forgotten_streams_and_allocation_respects_caps() {
        let f = BTreeMap::from([(1, 0.01), (2, f64::NAN), (3, -0.2)]);
        let w = weights(&[1, 2, 3], &f, 0.01);
        assert_eq!(w[&1], 2.0);
        assert_eq!(w[&2], 1.0, "a NaN counts as no information");
        assert_eq!(w[&3], 1.0);
        let a = allocate(&w, &BTreeMap::from([(1, 100), (2, 100), (3, 5)]), 40);
        assert_eq!(a.values().sum::<usize>(), 40);
        assert_eq!(a[&3], 5, "capped at its reservoir");
        assert_eq!((a[&1], a[&2]), (24, 11), "the rest shared 2:1");
        let small = allocate(&w, &BTreeMap::from([(1, 2), (2, 1)]), 40);
        assert_eq!(small.values().sum::<usize>(), 3, "never more than there is");
    }

    #[test]
    fn reads_lazily_and_skips_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let good =
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#;
        let text = format!("{good}\nnot json\n{good}\n");
        std::fs::write(dir.path().join("train.jsonl"), text).unwrap();
        let (ex, bad) = sample_file(&dir.path().join("train.jsonl"), 10, 1).unwrap();
        assert_eq!((ex.len(), bad), (2, 1));
        assert!(sample_file(&dir.path().join("missing.jsonl"), 10, 1).is_err());
    }
}
