//! The figures a decision rests on, read from the matrix, each with its
//! interval ([`crate::learn::matrix::stats`]), and the verdict on them: which limits
//! hold, which fail, which the data cannot tell, and — for a failure — its
//! cause.

use std::collections::BTreeMap;

use super::{MissingCell, PolicySpec};
use crate::config::Inconclusive;
use crate::learn::lineage::RowKey;
use crate::learn::matrix as eval;
use crate::learn::matrix::stats::{self, Bootstrap};
use crate::learn::records::Cause;
use crate::learn::records::Estimate;
use lorastream_store::{AdapterRow, EvalRow, StreamRow, StreamState};

pub(super) struct Figures {
    pub stream: i64,
    pub reference: i64,
    pub new_ppl: f64,
    pub reference_ppl: f64,
    /// 1 − new / reference.
    pub gain: Estimate,
    /// Per earlier stream: new / best before − 1.
    pub forgetting: BTreeMap<i64, Estimate>,
    pub probe_change: Option<Estimate>,
    /// How far below the base the reference already was on the new stream
    /// (1 − reference / base; None when the reference is the base).
    pub known: Option<f64>,
    /// The gain over every stream so far (the new one and the earlier ones,
    /// their examples pooled): what training on a known stream consolidates.
    pub overall: Option<Estimate>,
}

/// What the figures say.
pub(super) struct Verdict {
    pub pass: bool,
    pub cause: Option<Cause>,
    pub reasons: Vec<String>,
    /// The figures whose interval straddled their limit.
    pub inconclusive: Vec<String>,
}

fn bootstrap(p: &PolicySpec) -> Bootstrap {
    Bootstrap {
        resamples: p.feedback.resamples,
        confidence: p.feedback.confidence,
    }
}

/// `ppl(b) / ppl(a)` on stream `s` with its interval, or the point ratio
/// when the cells have no per-example figures in common.
fn ratio(p: &PolicySpec, evals: &[EvalRow], a: i64, b: i64, s: i64) -> Option<Estimate> {
    pooled_ratio(p, evals, a, b, &[s]).or_else(|| {
        let (x, y) = (eval::cell(evals, a, s)?, eval::cell(evals, b, s)?);
        Some(Estimate::point(y / x))
    })
}

/// `ppl(b) / ppl(a)` over the examples of `streams` pooled (each stream's
/// shared examples, token-weighted), with its interval; None when no stream
/// has per-example figures of both.
fn pooled_ratio(
    p: &PolicySpec,
    evals: &[EvalRow],
    a: i64,
    b: i64,
    streams: &[i64],
) -> Option<Estimate> {
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for &s in streams {
        let (pa, pb) = (
            eval::per_example(evals, a, s),
            eval::per_example(evals, b, s),
        );
        let n = pa.len().min(pb.len());
        xa.extend_from_slice(&pa[..n]);
        xb.extend_from_slice(&pb[..n]);
    }
    stats::ratio(&xa, &xb, bootstrap(p))
}

impl Figures {
    /// The cells `candidate`'s decision needs; `Err` names the first missing.
    pub fn read(
        p: &PolicySpec,
        candidate: &AdapterRow,
        chain: &[RowKey],
        streams: &[StreamRow],
        evals: &[EvalRow],
    ) -> Result<Figures, MissingCell> {
        let need = |a: i64, s: i64| {
            eval::cell(evals, a, s).ok_or(MissingCell {
                adapter: a,
                stream: s,
            })
        };
        let (c, stream) = (candidate.id, candidate.stream_id);
        let reference = candidate.parent_id.unwrap_or(0);
        let new_ppl = need(c, stream)?;
        let reference_ppl = need(reference, stream)?;
        let gain = ratio(p, evals, reference, c, stream)
            .unwrap_or(Estimate::point(new_ppl / reference_ppl))
            .map_down(|r| 1.0 - r);
        let mut forgetting = BTreeMap::new();
        // A failed stream (set aside: it could not be trained or evaluated)
        // has no column to keep.
        let earlier: Vec<i64> = streams
            .iter()
            .filter(|s| s.id < stream && s.n_eval > 0 && s.state != StreamState::Failed)
            .map(|s| s.id)
            .collect();
        for &s in &earlier {
            need(c, s)?;
            if let Some(f) = Self::forgot(p, evals, chain, s) {
                forgetting.insert(s, f);
            }
        }
        let probe_change = if p.probe {
            need(c, 0)?;
            Self::forgot(p, evals, chain, 0)
        } else {
            None
        };
        let known = (reference != 0)
            .then(|| eval::cell(evals, 0, stream))
            .flatten()
            .map(|base| 1.0 - reference_ppl / base);
        let overall = known.and_then(|_| {
            let all: Vec<i64> = earlier.iter().copied().chain([stream]).collect();
            pooled_ratio(p, evals, reference, c, &all).map(|r| r.map_down(|r| 1.0 - r))
        });
        Ok(Figures {
            stream,
            reference,
            new_ppl,
            reference_ppl,
            gain,
            forgetting,
            probe_change,
            known,
            overall,
        })
    }

    /// Forgetting of `s` by the chain's last version, with its interval.
    fn forgot(p: &PolicySpec, evals: &[EvalRow], chain: &[RowKey], s: i64) -> Option<Estimate> {
        let last = chain.last()?.0;
        let best = eval::best_before(evals, chain, s)?;
        ratio(p, evals, best, last, s).map(|r| r.map(|x| x - 1.0))
    }

    /// How far below the base the reference already is on the stream, when
    /// that is at least `known_gain`: the stream is known.
    pub fn known_to(&self, p: &PolicySpec) -> Option<f64> {
        self.known.filter(|k| *k >= p.feedback.known_gain)
    }

    /// The stream forgotten most (by the point estimate), and by how much.
    pub fn worst(&self) -> Option<(i64, Estimate)> {
        self.forgetting
            .iter()
            .max_by(|a, b| a.1.value.total_cmp(&b.1.value))
            .map(|(s, x)| (*s, *x))
    }

    fn finite(&self) -> bool {
        [self.new_ppl, self.reference_ppl]
            .iter()
            .all(|x| x.is_finite())
            && self.gain.is_finite()
            && self.forgetting.values().all(Estimate::is_finite)
            && self.probe_change.is_none_or(|c| c.is_finite())
            && self.overall.is_none_or(|c| c.is_finite())
    }

    /// Whether the gain reaches what the stream wants: `min_gain`, or
    /// `known_min_gain` for a stream the reference already knows.
    fn judge_gain(&self, p: &PolicySpec, v: &mut Verdict) -> bool {
        let f = &p.feedback;
        let (wanted, known) = match self.known_to(p) {
            Some(k) => (
                f.known_min_gain,
                format!(
                    ", the stream known: {:.1}% below the base already",
                    k * 100.0
                ),
            ),
            None => (f.min_gain, String::new()),
        };
        let ok = v.check(f.inconclusive, "gain", self.gain, wanted, true);
        v.reasons.push(format!(
            "stream {}: perplexity {:.3} vs version {}'s {:.3} (gain {}; at least {} wanted{known})",
            self.stream,
            self.new_ppl,
            self.reference,
            self.reference_ppl,
            self.gain.pct(),
            pct(wanted)
        ));
        ok || self.consolidates(p, v)
    }

    /// A known stream's candidate short of its own gain still earns its
    /// place when it is that much better over every stream so far, and no
    /// worse on the new one than the forgetting limit allows.
    fn consolidates(&self, p: &PolicySpec, v: &mut Verdict) -> bool {
        let f = &p.feedback;
        let (Some(_), Some(all)) = (self.known_to(p), self.overall) else {
            return false;
        };
        let better = v.check(
            f.inconclusive,
            "gain over every stream",
            all,
            f.known_min_gain,
            true,
        );
        let change = self.gain.map_down(|g| -g);
        let kept = v.check(
            f.inconclusive,
            &format!("change of stream {}", self.stream),
            change,
            f.max_forgetting,
            false,
        );
        let verb = if better && kept {
            "reaches"
        } else {
            "does not reach"
        };
        v.reasons.push(format!(
            "over every stream so far: gain {} {verb} {} (stream {} {}, limit {})",
            all.pct(),
            pct(f.known_min_gain),
            self.stream,
            change.pct(),
            pct(f.max_forgetting)
        ));
        better && kept
    }

    /// Whether every limit holds, with a reason per check and the cause of
    /// a failure.
    pub fn judge(&self, p: &PolicySpec) -> Verdict {
        let f = &p.feedback;
        let mut v = Verdict {
            pass: true,
            cause: None,
            reasons: Vec::new(),
            inconclusive: Vec::new(),
        };
        if !self.finite() {
            v.pass = false;
            v.cause = Some(Cause::NotFinite);
            v.reasons.push(format!(
                "a figure is not finite (perplexity {}, reference {}, forgetting {:?}, probe {:?})",
                self.new_ppl,
                self.reference_ppl,
                self.forgetting
                    .values()
                    .map(|e| e.value)
                    .collect::<Vec<_>>(),
                self.probe_change.map(|e| e.value)
            ));
        }
        let gain_ok = self.judge_gain(p, &mut v);
        let mut forgot = false;
        for (s, e) in &self.forgetting {
            let ok = v.check(
                f.inconclusive,
                &format!("forgetting of stream {s}"),
                *e,
                f.max_forgetting,
                false,
            );
            if !ok || Some(*s) == self.worst().map(|w| w.0) {
                let verb = if ok { "is within" } else { "exceeds" };
                v.reasons.push(format!(
                    "forgetting {} (stream {s}) {verb} the {} limit",
                    e.pct(),
                    pct(f.max_forgetting)
                ));
            }
            forgot |= !ok;
        }
        let probe_ok = self.probe_change.is_none_or(|c| {
            let ok = v.check(f.inconclusive, "probe set", c, f.max_probe_increase, false);
            let verb = if ok { "is within" } else { "exceeds" };
            v.reasons.push(format!(
                "probe set {} {verb} the {} limit",
                c.pct(),
                pct(f.max_probe_increase)
            ));
            ok
        });
        if !v.inconclusive.is_empty() {
            v.reasons.push(format!(
                "inconclusive ({}): counted as `{}`",
                v.inconclusive.join(", "),
                f.inconclusive
            ));
        }
        v.pass &= gain_ok && !forgot && probe_ok;
        if v.cause.is_none() && !v.pass {
            v.cause = Some(if forgot {
                Cause::Forgetting
            } else if !probe_ok {
                Cause::Probe
            } else {
                Cause::UnderLearning
            });
        }
        v
    }
}

impl Verdict {
    /// Whether `e` is on the right side of `limit` (`at_least`: it must
    /// reach it; else it must stay under it); an interval straddling the
    /// limit is noted and counted as `rule` says.
    fn check(
        &mut self,
        rule: Inconclusive,
        what: &str,
        e: Estimate,
        limit: f64,
        at_least: bool,
    ) -> bool {
        let point = if at_least {
            e.value >= limit
        } else {
            e.value <= limit
        };
        let (sure_ok, sure_bad) = if at_least {
            (e.lo >= limit, e.hi < limit)
        } else {
            (e.hi <= limit, e.lo > limit)
        };
        if sure_ok || sure_bad {
            return sure_ok;
        }
        self.inconclusive.push(format!("{what} {}", e.pct()));
        match rule {
            Inconclusive::Point => point,
            Inconclusive::Pass => true,
            Inconclusive::Fail => false,
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}
