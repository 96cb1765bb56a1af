//! Continuous batching: every admitted sequence advances in one forward pass
//! per step. A decoding sequence adds its last token; sequences still reading
//! their prompt share a budget of `prefill_chunk` prompt tokens per step (the
//! oldest first), so a long prompt is read over several steps while the
//! others keep streaming. Each sequence has its own KV cache: a slot of the
//! batch's pool (`[max_batch, kv_heads, kv budget / max_batch positions,
//! head_dim]` per layer; pooled sequences decode in one attention call), or
//! for a longer one a cache of its own, allocated once for its prompt and
//! token budget. Admission stops at `max_batch` sequences or when the caches
//! would pass the KV budget. Sequences on the same version
//! sit side by side, so each LoRA is applied once per run of rows.

use std::rc::Rc;
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use crate::serve::backend::jobs::{EngineError, Event, Job};
use crate::serve::backend::served::Served;
use crate::util::metrics::METRICS;
use lorastream_ml::generation::generate::{Decoder, FinishReason, Logprob};
use lorastream_ml::nn::kv_pool::KvPool;
use lorastream_ml::{Adapter, KvCache, Segment};

/// How the batch is bounded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_batch: usize,
    /// Bytes all caches may hold together.
    pub kv_bytes: i64,
    /// Prompt tokens read per step, over all sequences.
    pub prefill_chunk: usize,
    /// A client whose channel stays full this long is dropped.
    pub send_timeout: Duration,
}

struct Seq {
    job: Job,
    adapter: Option<Rc<Adapter>>,
    cache: KvCache,
    /// Tokens the next pass feeds: the prompt not read yet, or the last token.
    pending: Vec<i64>,
    decoder: Decoder,
    /// Cache bytes reserved for it.
    reserved: i64,
    /// Its slot in the batch's pool (None: a cache of its own).
    slot: Option<i64>,
    arrived: u64,
    out: Outbox,
}

pub(super) struct Batch {
    seqs: Vec<Seq>,
    reserved: i64,
    limits: Limits,
    arrivals: u64,
    /// The caches of sequences that fit a slot (made with the first one).
    pool: Option<KvPool>,
    free_slots: Vec<i64>,
}

/// What admission says of a job.
pub(super) enum Admit {
    Joined,
    /// No room now; it waits for a sequence to finish.
    Wait(Box<Job>),
}

impl Batch {
    pub fn new(limits: Limits) -> Batch {
        Batch {
            seqs: Vec::new(),
            reserved: 0,
            limits,
            arrivals: 0,
            pool: None,
            free_slots: Vec::new(),
        }
    }

    /// Forgets the pool (the model changed); only while the batch is empty.
    pub fn drop_pool(&mut self) {
        debug_assert!(self.seqs.is_empty());
        self.pool = None;
        self.free_slots.clear();
    }

    /// A cache for `positions` positions: a slot of the pool when one is
    /// free and long enough, else a cache of its own.
    fn cache_for(&mut self, served: &Served, positions: i64) -> (KvCache, Option<i64>) {
        let m = &served.model;
        let pool = self.pool.get_or_insert_with(|| {
            let per_slot = self.limits.kv_bytes
                / (self.limits.max_batch as i64 * m.kv_bytes_per_token()).max(1);
            let capacity = per_slot.clamp(1, m.config.max_position_embeddings as i64);
            self.free_slots = (0..self.limits.max_batch as i64).rev().collect();
            KvPool::new(
                &m.config,
                m.kind,
                m.device,
                self.limits.max_batch as i64,
                capacity,
            )
        });
        if positions <= pool.capacity()
            && let Some(slot) = self.free_slots.pop()
        {
            return (pool.cache(slot), Some(slot));
        }
        (KvCache::with_capacity(m.config.num_layers, positions), None)
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Adds `job` to the batch if it fits (a job too large for the whole
    /// budget runs alone); the caller has put its base in place.
    pub fn admit(
        &mut self,
        served: &mut Served,
        job: Job,
    ) -> Result<Admit, Box<(Job, EngineError)>> {
        // Room first: a job that waits is looked at again every step.
        let max_pos = served.model.config.max_position_embeddings;
        let positions = (job.prompt.len() + job.params.budget(job.prompt.len(), max_pos)) as i64;
        let need = positions * served.model.kv_bytes_per_token();
        let full = self.seqs.len() >= self.limits.max_batch
            || (!self.seqs.is_empty() && self.reserved + need > self.limits.kv_bytes);
        if full {
            return Ok(Admit::Wait(Box::new(job)));
        }
        let decoder = match Decoder::new(
            &served.model.config,
            served.tok.eos_id(),
            &job.prompt,
            &job.params,
        ) {
            Ok(d) => d,
            Err(e) => return Err(Box::new((job, EngineError::Generation(e.to_string())))),
        };
        let adapter = match served.adapter(&job.version) {
            Ok(a) => a,
            Err(e) => return Err(Box::new((job, e))),
        };
        let out = Outbox::new(self.limits.send_timeout);
        let (cache, slot) = self.cache_for(served, positions);
        let seq = Seq {
            cache,
            slot,
            pending: job.prompt.iter().map(|&t| t as i64).collect(),
            decoder,
            reserved: need,
            arrived: self.arrivals,
            adapter,
            job,
            out,
        };
        self.arrivals += 1;
        self.reserved += need;
        // Beside the sequences on the same version: one LoRA run per version.
        let key = adapter_key(seq.adapter.as_ref());
        let at = self
            .seqs
            .iter()
            .rposition(|s| adapter_key(s.adapter.as_ref()) == key)
            .map_or(self.seqs.len(), |i| i + 1);
        self.seqs.insert(at, seq);
        let s = &mut self.seqs[at];
        if s.out.send(&s.job.events, Event::Started).is_err() {
            self.finish(at, None);
        }
        METRICS.batch_size.set(self.seqs.len() as i64);
        Ok(Admit::Joined)
    }

    /// Fails every sequence (the model is in an unknown state).
    pub fn fail_all(&mut self, why: &str) {
        for mut s in std::mem::take(&mut self.seqs) {
            let e = EngineError::Generation(why.to_string());
            let _ = s.out.send(&s.job.events, Event::Failed(e));
            self.free_slots.extend(s.slot);
        }
        self.reserved = 0;
        METRICS.batch_size.set(0);
    }

    /// How many prompt tokens each sequence reads this step (decoding ones: 1).
    fn plan(&self) -> Vec<usize> {
        let mut take = vec![0; self.seqs.len()];
        let mut reading: Vec<usize> = Vec::new();
        for (i, s) in self.seqs.iter().enumerate() {
            if s.cache.len == 0 || s.pending.len() > 1 {
                reading.push(i);
            } else {
                take[i] = 1;
            }
        }
        reading.sort_by_key(|&i| self.seqs[i].arrived);
        let mut budget = self.limits.prefill_chunk.max(1);
        for i in reading {
            let n = self.seqs[i].pending.len().min(budget);
            take[i] = n;
            budget -= n;
            if budget == 0 {
                break;
            }
        }
        take
    }

    /// One forward pass over every sequence, then each one whose prompt is
    /// read gets its next token.
    pub fn step(&mut self, served: &Served) -> Result<(), tch::TchError> {
        self.drop_gone();
        if self.seqs.is_empty() {
            return Ok(());
        }
        let take = self.plan();
        let (mut ids, mut positions) = (Vec::new(), Vec::new());
        for (s, &n) in self.seqs.iter().zip(&take) {
            ids.extend_from_slice(&s.pending[..n]);
            positions.extend(s.cache.len..s.cache.len + n as i64);
        }
        let dev = served.model.device;
        let ids = Tensor::from_slice(&ids).unsqueeze(0).to_device(dev);
        let positions = Tensor::from_slice(&positions).unsqueeze(0).to_device(dev);
        let segments: Vec<Segment> = self
            .seqs
            .iter_mut()
            .zip(&take)
            .filter(|(_, n)| **n > 0)
            .map(|(s, &n)| Segment {
                len: n as i64,
                cache: &mut s.cache,
                adapter: s.adapter.as_deref(),
            })
            .collect();
        let last = served
            .model
            .forward_segments(&ids, &positions, segments, self.pool.as_ref());
        // Rows of the sequences that now need a token (their prompt is read).
        let mut want = Vec::new();
        let mut row = 0;
        for (i, (s, &n)) in self.seqs.iter_mut().zip(&take).enumerate() {
            if n == 0 {
                continue;
            }
            s.pending.drain(..n);
            if s.pending.is_empty() {
                want.push((i, row));
            }
            row += 1;
        }
        if want.is_empty() {
            return Ok(());
        }
        let rows: Vec<i64> = want.iter().map(|w| w.1).collect();
        let rows = Tensor::from_slice(&rows).to_device(dev);
        let logits = served.model.head_rows(&last.index_select(0, &rows));
        let picks = self.pick(&want, &logits)?;
        let mut done = Vec::new();
        for ((i, _), (id, lp)) in want.iter().zip(picks) {
            if let Some(why) = self.deliver(*i, served, id, lp) {
                done.push((*i, why));
            }
        }
        for (i, why) in done.into_iter().rev() {
            self.finish(i, Some(why));
        }
        Ok(())
    }

    /// The next token of each wanted sequence from its row of `logits`.
    fn pick(
        &mut self,
        want: &[(usize, i64)],
        logits: &Tensor,
    ) -> Result<Vec<(u32, Option<Logprob>)>, tch::TchError> {
        if want
            .iter()
            .all(|(i, _)| self.seqs[*i].decoder.params().plain_greedy())
        {
            let ids: Vec<i64> =
                Vec::try_from(logits.argmax(-1, false).to_device(tch::Device::Cpu))?;
            return Ok(ids.into_iter().map(|t| (t as u32, None)).collect());
        }
        let vocab = logits.size()[1] as usize;
        let all: Vec<f32> = Vec::try_from(
            logits
                .to_kind(Kind::Float)
                .to_device(tch::Device::Cpu)
                .view([-1]),
        )?;
        Ok(want
            .iter()
            .zip(all.chunks_exact(vocab))
            .map(|((i, _), row)| self.seqs[*i].decoder.choose(&mut row.to_vec()))
            .collect())
    }

    /// Hands sequence `i` its token; `Some` when its answer ends.
    fn deliver(
        &mut self,
        i: usize,
        served: &Served,
        id: u32,
        lp: Option<Logprob>,
    ) -> Option<FinishReason> {
        METRICS.chat_tokens.inc();
        let s = &mut self.seqs[i];
        let step = s.decoder.accept(&served.tok, id);
        s.pending = vec![id as i64];
        let logprobs: Vec<Logprob> = lp.into_iter().collect();
        let mut text = step.delta;
        if step.done.is_some() {
            text.push_str(&s.decoder.rest(&served.tok));
        }
        if (!text.is_empty() || !logprobs.is_empty())
            && s.out
                .send(&s.job.events, Event::Delta { text, logprobs })
                .is_err()
        {
            return Some(FinishReason::Cancelled);
        }
        step.done
    }

    /// Ends sequence `i` (`why` None: it is gone already) and frees its room.
    fn finish(&mut self, i: usize, why: Option<FinishReason>) {
        let mut s = self.seqs.remove(i);
        self.reserved -= s.reserved;
        self.free_slots.extend(s.slot);
        METRICS.batch_size.set(self.seqs.len() as i64);
        match why {
            Some(FinishReason::Cancelled) | None => {
                tracing::info!(version = %s.job.version.label, tokens = s.decoder.tokens(), "client went away; generation stopped");
            }
            Some(finish) => {
                let done = Event::Done {
                    finish,
                    completion_tokens: s.decoder.tokens(),
                    prompt_tokens: None,
                };
                let _ = s.out.send(&s.job.events, done);
            }
        }
    }

    /// Sequences whose client hung up or stopped reading leave at once.
    fn drop_gone(&mut self) {
        for i in (0..self.seqs.len()).rev() {
            let s = &mut self.seqs[i];
            if s.job.events.is_closed() || s.out.flush(&s.job.events).is_err() {
                self.finish(i, None);
            }
        }
    }
}

fn adapter_key(a: Option<&Rc<Adapter>>) -> usize {
    a.map_or(0, |a| Rc::as_ptr(a) as usize)
}

/// A sequence's events, sent without ever blocking the worker: what the
/// channel has no room for waits here, and a client that has taken nothing
/// for `timeout` is dropped (its generation ends).
struct Outbox {
    backlog: std::collections::VecDeque<Event>,
    stalled: Option<Instant>,
    timeout: Duration,
}

impl Outbox {
    fn new(timeout: Duration) -> Outbox {
        Outbox {
            backlog: Default::default(),
            stalled: None,
            timeout,
        }
    }

    fn send(&mut self, events: &tokio::sync::mpsc::Sender<Event>, e: Event) -> Result<(), ()> {
        self.backlog.push_back(e);
        self.flush(events)
    }

    /// Sends what waits; `Err` when the client is gone or stalled too long.
    fn flush(&mut self, events: &tokio::sync::mpsc::Sender<Event>) -> Result<(), ()> {
        while let Some(e) = self.backlog.pop_front() {
            match events.try_send(e) {
                Ok(()) => self.stalled = None,
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Err(()),
                Err(tokio::sync::mpsc::error::TrySendError::Full(e)) => {
                    self.backlog.push_front(e);
                    let since = *self.stalled.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.timeout {
                        tracing::warn!(
                            timeout_secs = self.timeout.as_secs(),
                            "a client stopped reading its stream; dropped"
                        );
                        return Err(());
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let mut out = Outbox::new(Duration::from_millis(200));
        assert!(out.send(&tx, Event::Started).is_ok());
        let started = Instant::now();
        assert!(out.send(&tx, Event::Started).is_ok(), "kept, not blocking");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "never waits"
        );
        std::thread::sleep(Duration::from_millis(210));
        assert!(out.flush(&tx).is_err(), "nobody read for the timeout");
        assert!(matches!(rx.try_recv(), Ok(Event::Started)));
        drop(rx);
        assert!(out.send(&tx, Event::Started).is_err(), "gone");
    }
}
