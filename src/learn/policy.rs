//! The feedback policy (DESIGN.md §4, docs/continual-learning.md): once a
//! candidate's row of the matrix is filled, promote it, retrain its stream
//! from the same parent with more replay and a lower learning rate, or — after
//! `max_attempts` — give the stream up as `not_learned` and keep serving the
//! promoted version. Every number is checked to be finite; a NaN anywhere is a
//! refusal with that reason.

use std::collections::BTreeMap;

use crate::learn::eval::{self, RowKey};
use crate::learn::lineage;
pub use crate::learn::records::{Action, Attempt, Decision};
pub use crate::learn::spec::PolicySpec;
use lorastream_store::{
    Actor, AdapterRow, AdapterState, EvalRow, Store, StoreError, StreamRow, StreamState,
};

/// A cell of the perplexity matrix the decision needs is not filled yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no perplexity of version {adapter} on stream {stream} yet")]
pub struct MissingCell {
    pub adapter: i64,
    pub stream: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("adapter {0} not found")]
    NoAdapter(i64),
    #[error(transparent)]
    Missing(#[from] MissingCell),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot record the decision: {0}")]
    Record(#[from] serde_json::Error),
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

/// The figures a decision rests on, read from the matrix.
struct Figures {
    stream: i64,
    reference: i64,
    new_ppl: f64,
    reference_ppl: f64,
    gain: f64,
    forgetting: BTreeMap<i64, f64>,
    probe_change: Option<f64>,
}

impl Figures {
    /// The cells `candidate`'s decision needs; `Err` names the first missing.
    fn read(
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
        let mut forgetting = BTreeMap::new();
        // A failed stream (set aside: it could not be trained or evaluated)
        // has no column to keep.
        let earlier = streams
            .iter()
            .filter(|s| s.id < stream && s.n_eval > 0 && s.state != StreamState::Failed);
        for s in earlier {
            need(c, s.id)?;
            if let Some(x) = eval::forgetting(evals, chain, s.id) {
                forgetting.insert(s.id, x);
            }
        }
        let probe_change = if p.probe {
            need(c, 0)?;
            eval::forgetting(evals, chain, 0)
        } else {
            None
        };
        Ok(Figures {
            stream,
            reference,
            new_ppl,
            reference_ppl,
            gain: 1.0 - new_ppl / reference_ppl,
            forgetting,
            probe_change,
        })
    }

    /// The stream forgotten most, and by how much.
    fn worst(&self) -> Option<(i64, f64)> {
        self.forgetting
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(s, x)| (*s, *x))
    }

    /// Whether every limit holds, with a reason per check.
    fn judge(&self, p: &PolicySpec) -> (bool, Vec<String>) {
        let Figures {
            stream,
            reference,
            new_ppl,
            reference_ppl,
            gain,
            ..
        } = *self;
        let mut reasons = Vec::new();
        let numbers = [new_ppl, reference_ppl, gain]
            .into_iter()
            .chain(self.forgetting.values().copied())
            .chain(self.probe_change);
        let mut pass = true;
        if numbers.clone().any(|x| !x.is_finite()) {
            pass = false;
            reasons.push(format!(
                "a figure is not finite (perplexity {new_ppl}, reference {reference_ppl}, forgetting {:?}, probe {:?})",
                self.forgetting, self.probe_change
            ));
        }
        pass &= gain >= p.feedback.min_gain;
        reasons.push(format!(
            "stream {stream}: perplexity {new_ppl:.3} vs version {reference}'s {reference_ppl:.3} ({} gain; at least {} wanted)",
            pct(gain),
            pct(p.feedback.min_gain)
        ));
        let limits = [
            self.worst().map(|(s, x)| {
                let what = format!("max forgetting {} (stream {s})", pct(x));
                (what, x, p.feedback.max_forgetting)
            }),
            self.probe_change.map(|c| {
                (
                    format!("probe set {}", pct(c)),
                    c,
                    p.feedback.max_probe_increase,
                )
            }),
        ];
        for (what, x, limit) in limits.into_iter().flatten() {
            let ok = x <= limit;
            pass &= ok;
            let verb = if ok { "is within" } else { "exceeds" };
            reasons.push(format!("{what} {verb} the {} limit", pct(limit)));
        }
        (pass, reasons)
    }
}

/// The policy on stored cells; `chain` is the candidate's lineage (root
/// first, the candidate last). `Err` names the first cell still missing.
pub fn decide(
    p: &PolicySpec,
    candidate: &AdapterRow,
    chain: &[RowKey],
    streams: &[StreamRow],
    evals: &[EvalRow],
) -> Result<Decision, MissingCell> {
    let figures = Figures::read(p, candidate, chain, streams, evals)?;
    let (pass, mut reasons) = figures.judge(p);
    let (attempt, stream) = (candidate.attempt, figures.stream);
    let (action, next) = if !p.feedback.enabled {
        reasons.push("feedback is off: promoted without checks".into());
        (Action::Promote, None)
    } else if pass {
        (Action::Promote, None)
    } else if attempt < p.feedback.max_attempts as i64 {
        let next = Attempt::nth(p, attempt + 1);
        reasons.push(format!(
            "retrain: attempt {} of {} with replay {:.2}, lr {:.2e}",
            next.number, p.feedback.max_attempts, next.replay_fraction, next.lr
        ));
        (Action::Retrain, Some(next))
    } else {
        reasons.push(format!(
            "attempt {attempt} was the last of {}: stream {stream} is not learned; its data stays for replay",
            p.feedback.max_attempts
        ));
        (Action::GiveUp, None)
    };
    Ok(Decision {
        action,
        reasons,
        stream,
        attempt,
        reference: figures.reference,
        new_ppl: figures.new_ppl,
        reference_ppl: figures.reference_ppl,
        gain: figures.gain,
        max_forgetting: figures.worst().map(|w| w.1),
        forgetting: figures.forgetting,
        probe_change: figures.probe_change,
        next,
    })
}

/// Decides on candidate `adapter_id` from the store and records the outcome
/// (adapter and stream state, in one transaction). `None`: it was decided
/// already (a repeated message).
pub fn decide_stored(
    p: &PolicySpec,
    store: &Store,
    adapter_id: i64,
    by: Actor,
) -> Result<Option<Decision>, PolicyError> {
    let all = store.adapters()?;
    let candidate = all
        .iter()
        .find(|a| a.id == adapter_id)
        .ok_or(PolicyError::NoAdapter(adapter_id))?;
    if candidate.state != AdapterState::Candidate {
        return Ok(None);
    }
    let chain = lineage::row_keys(&lineage::chain(&all, candidate));
    let d = decide(p, candidate, &chain, &store.streams()?, &store.evals()?)?;
    let (to, stream_to) = match d.action {
        Action::Promote => (AdapterState::Promoted, None),
        Action::Retrain => (AdapterState::Rejected, Some(StreamState::Sealed)),
        Action::GiveUp => (AdapterState::NotLearned, Some(StreamState::NotLearned)),
    };
    // Recorded as `records::Outcome::Decided`, which is the decision itself.
    let record = serde_json::to_value(&d)?;
    let summary = d.reasons.join("; ");
    store.settle_candidate(adapter_id, to, d.stream, stream_to, &record, by, &summary)?;
    crate::util::metrics::METRICS
        .decisions
        .with_label_values(&[d.action.as_str()])
        .inc();
    tracing::info!(
        adapter = adapter_id,
        stream = d.stream,
        attempt = d.attempt,
        decision = %d.action,
        ppl = d.new_ppl,
        reference = d.reference,
        reference_ppl = d.reference_ppl,
        gain = d.gain,
        max_forgetting = d.max_forgetting,
        probe_change = d.probe_change,
        reasons = %summary,
        "feedback decision"
    );
    Ok(Some(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lorastream_store::{AdapterKind, StreamState};
    use serde_json::json;

    fn adapter(id: i64, parent: Option<i64>, stream: i64, attempt: i64) -> AdapterRow {
        AdapterRow {
            id,
            parent_id: parent,
            stream_id: stream,
            attempt,
            kind: AdapterKind::Lora,
            path: Default::default(),
            hyperparams: json!({}),
            train_log: None,
            decision: None,
            state: AdapterState::Candidate,
            promoted_seq: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn stream(id: i64) -> StreamRow {
        StreamRow {
            id,
            name: format!("s{id}"),
            created_at: 0,
            n_train: 10,
            n_eval: 8,
            path: Default::default(),
            state: StreamState::Trained,
        }
    }

    fn cells(v: &[(i64, i64, f64)]) -> Vec<EvalRow> {
        v.iter()
            .map(|&(a, s, p)| crate::learn::eval::tests::cell(a, s, p))
            .collect()
    }

    fn config(toml: &str) -> crate::config::Config {
        let mut c: crate::config::Config = toml::from_str(toml).unwrap();
        c.eval.probe = toml.contains("probe = true");
        c
    }

    const CHAIN: [RowKey; 3] = [(0, None), (1, Some(1)), (2, Some(2))];

    #[test]
    fn promotes_retrains_then_gives_up() {
        let cfg = config("");
        let streams = [stream(1), stream(2)];
        // v2 trained on stream 2 from v1; v1 was promoted after stream 1.
        let base = [(0, 1, 30.0), (0, 2, 40.0), (1, 1, 10.0), (1, 2, 20.0)];
        let with = |more: &[(i64, i64, f64)]| cells(&[&base[..], more].concat());
        let c = adapter(2, Some(1), 2, 1);
        let d = decide(
            &PolicySpec::from_config(&cfg),
            &c,
            &CHAIN,
            &streams,
            &with(&[(2, 1, 10.05), (2, 2, 15.0)]),
        )
        .unwrap();
        assert_eq!(d.action, Action::Promote, "{d:?}");
        assert!((d.max_forgetting.unwrap() - 0.005).abs() < 1e-9);
        assert!((d.gain - 0.25).abs() < 1e-9);
        // Forgot 3% of stream 1: retrain with more replay and a lower rate.
        let forgot = with(&[(2, 1, 10.3), (2, 2, 15.0)]);
        let d = decide(
            &PolicySpec::from_config(&cfg),
            &c,
            &CHAIN,
            &streams,
            &forgot,
        )
        .unwrap();
        assert_eq!(d.action, Action::Retrain);
        let next = d.next.unwrap();
        assert_eq!(next.number, 2);
        assert!((next.replay_fraction - (cfg.train.replay_fraction + 0.25)).abs() < 1e-12);
        assert!((next.lr - cfg.train.lr * 0.5).abs() < 1e-15);
        assert!(
            d.reasons.iter().any(|r| r.contains("exceeds")),
            "{:?}",
            d.reasons
        );
        // The last attempt gives the stream up.
        let last = adapter(2, Some(1), 2, cfg.feedback.max_attempts as i64);
        let d = decide(
            &PolicySpec::from_config(&cfg),
            &last,
            &CHAIN,
            &streams,
            &forgot,
        )
        .unwrap();
        assert_eq!(d.action, Action::GiveUp);
        assert!(d.reasons.last().unwrap().contains("not learned"));
        // Too little gain on the new stream: refused.
        let flat = with(&[(2, 1, 10.0), (2, 2, 19.9)]);
        assert_eq!(
            decide(&PolicySpec::from_config(&cfg), &c, &CHAIN, &streams, &flat)
                .unwrap()
                .action,
            Action::Retrain
        );
        // Feedback off: promoted whatever the numbers.
        let off = config("[feedback]\nenabled = false\n");
        assert_eq!(
            decide(
                &PolicySpec::from_config(&off),
                &c,
                &CHAIN,
                &streams,
                &forgot
            )
            .unwrap()
            .action,
            Action::Promote
        );
        assert_eq!(
            Attempt::nth(&PolicySpec::from_config(&off), 3).lr,
            off.train.lr,
            "no decay without the policy"
        );
        // The first stream is compared with the base model (version 0).
        let first = adapter(1, None, 1, 1);
        let d = decide(
            &PolicySpec::from_config(&cfg),
            &first,
            &CHAIN[..2],
            &streams,
            &cells(&[(0, 1, 30.0), (1, 1, 12.0)]),
        )
        .unwrap();
        assert!(d.action == Action::Promote && d.reference == 0 && d.forgetting.is_empty());
        // Missing cells: no decision yet.
        let e = decide(
            &PolicySpec::from_config(&cfg),
            &c,
            &CHAIN,
            &streams,
            &cells(&[(2, 2, 15.0)]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("version 1 on stream 2"), "{e}");
    }

    #[test]
    fn the_probe_set_and_non_finite_figures_refuse() {
        let cfg = config("[eval]\nprobe = true\n");
        let streams = [stream(1)];
        let chain = &CHAIN[..2];
        let c = adapter(1, None, 1, 1);
        let ok = cells(&[(0, 0, 20.0), (0, 1, 30.0), (1, 0, 20.1), (1, 1, 12.0)]);
        let d = decide(&PolicySpec::from_config(&cfg), &c, chain, &streams, &ok).unwrap();
        assert_eq!(d.action, Action::Promote);
        assert!((d.probe_change.unwrap() - 0.005).abs() < 1e-9);
        let worse = cells(&[(0, 0, 20.0), (0, 1, 30.0), (1, 0, 21.0), (1, 1, 12.0)]);
        let d = decide(&PolicySpec::from_config(&cfg), &c, chain, &streams, &worse).unwrap();
        assert_eq!(d.action, Action::Retrain);
        assert!(
            d.reasons
                .iter()
                .any(|r| r.contains("probe set +5.0% exceeds")),
            "{:?}",
            d.reasons
        );
        assert!(
            decide(
                &PolicySpec::from_config(&cfg),
                &c,
                chain,
                &streams,
                &cells(&[(0, 1, 30.0), (1, 1, 12.0)])
            )
            .is_err(),
            "the probe cell is needed"
        );
        for bad in [f64::NAN, f64::INFINITY] {
            let nan = cells(&[(0, 0, 20.0), (0, 1, 30.0), (1, 0, 20.0), (1, 1, bad)]);
            let d = decide(&PolicySpec::from_config(&cfg), &c, chain, &streams, &nan).unwrap();
            assert_ne!(d.action, Action::Promote, "{bad}");
            assert!(d.reasons[0].contains("not finite"), "{:?}", d.reasons);
        }
    }
}
