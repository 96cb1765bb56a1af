//! Feedback: promotes a candidate when its perplexity on the new stream beats
//! the version it was trained from and its forgetting on every earlier stream
//! stays within `[feedback] max_forgetting`; rejects it otherwise. The
//! decision, its reasons and numbers are stored on the adapter and logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use super::messages::{Decided, EvalReport, StageDone};
use super::{Stage, StageError, UseConfig, mark};
use crate::config::{Config, FeedbackConfig};
use crate::store::{AdapterRow, AdapterState, EvalRow, StageState, Store, StreamRow};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub promote: bool,
    pub reasons: Vec<String>,
    pub stream: i64,
    /// The version the candidate is compared with (its parent; 0 = base model).
    pub reference: i64,
    pub new_ppl: f64,
    pub reference_ppl: f64,
    /// Per earlier stream: candidate ppl / reference ppl − 1.
    pub forgetting: BTreeMap<i64, f64>,
    pub max_forgetting: f64,
    pub threshold: f64,
}

/// A cell of the perplexity matrix the decision needs is not filled yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no perplexity of version {adapter} on stream {stream} yet")]
pub struct MissingCell {
    pub adapter: i64,
    pub stream: i64,
}

/// Why a candidate could not be decided on (the stage retries).
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("adapter {0} not found")]
    NoAdapter(i64),
    #[error(transparent)]
    Missing(#[from] MissingCell),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot record the decision: {0}")]
    Record(#[from] serde_json::Error),
}

/// The policy, on stored cells. `Err` names the first cell still missing.
pub fn decide(
    cfg: &FeedbackConfig,
    candidate: &AdapterRow,
    streams: &[StreamRow],
    evals: &[EvalRow],
) -> Result<Decision, MissingCell> {
    let reference = candidate.parent_id.unwrap_or(0);
    let cell = |a: i64, s: i64| {
        evals
            .iter()
            .find(|e| e.adapter_id == a && e.stream_id == s)
            .map(|e| e.perplexity)
            .ok_or(MissingCell {
                adapter: a,
                stream: s,
            })
    };
    let stream = candidate.stream_id;
    let new_ppl = cell(candidate.id, stream)?;
    let reference_ppl = cell(reference, stream)?;
    let mut forgetting = BTreeMap::new();
    for s in streams.iter().filter(|s| s.id < stream && s.n_eval > 0) {
        let (now, before) = (cell(candidate.id, s.id)?, cell(reference, s.id)?);
        forgetting.insert(s.id, now / before - 1.0);
    }
    let max_forgetting = forgetting.values().copied().fold(0.0, f64::max);
    let mut reasons = Vec::new();
    let improved = new_ppl < reference_ppl;
    if improved {
        reasons.push(format!(
            "stream {stream} perplexity {new_ppl:.3} improves on version {reference}'s {reference_ppl:.3}"
        ));
    } else {
        reasons.push(format!(
            "stream {stream} perplexity {new_ppl:.3} does not improve on version {reference}'s {reference_ppl:.3}"
        ));
    }
    let forgot = max_forgetting > cfg.max_forgetting;
    if let Some((s, f)) = forgetting.iter().max_by(|a, b| a.1.total_cmp(b.1)) {
        reasons.push(format!(
            "max forgetting {:.1}% (stream {s}) {} the {:.1}% limit",
            f * 100.0,
            if forgot { "exceeds" } else { "is within" },
            cfg.max_forgetting * 100.0
        ));
    }
    let promote = (improved || !cfg.require_improvement) && !forgot;
    Ok(Decision {
        promote,
        reasons,
        stream,
        reference,
        new_ppl,
        reference_ppl,
        forgetting,
        max_forgetting,
        threshold: cfg.max_forgetting,
    })
}

pub struct Feedback {
    pub config: Arc<Config>,
    pub store: Store,
    pub supervisor: Recipient<Decided>,
    pub done: Recipient<StageDone>,
}

impl Actor for Feedback {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::MAILBOX);
    }
}

impl Feedback {
    fn decide_one(&mut self, adapter_id: i64) -> Result<Option<Decision>, FeedbackError> {
        let Some(candidate) = self.store.adapter(adapter_id)? else {
            return Err(FeedbackError::NoAdapter(adapter_id));
        };
        if candidate.state != AdapterState::Candidate {
            return Ok(None); // decided already (a repeated message)
        }
        let streams = self.store.streams()?;
        let evals = self.store.evals()?;
        let d = decide(&self.config.feedback, &candidate, &streams, &evals)?;
        let record = serde_json::to_value(&d)?;
        let to = if d.promote {
            AdapterState::Promoted
        } else {
            AdapterState::Rejected
        };
        self.store
            .set_adapter_state(adapter_id, to, Some(&record))?;
        crate::metrics::METRICS
            .decisions
            .with_label_values(&[if d.promote { "promoted" } else { "rejected" }])
            .inc();
        tracing::info!(
            adapter = adapter_id,
            stream = d.stream,
            decision = if d.promote { "promoted" } else { "rejected" },
            ppl = d.new_ppl,
            reference = d.reference,
            reference_ppl = d.reference_ppl,
            max_forgetting = d.max_forgetting,
            reasons = %d.reasons.join("; "),
            "feedback decision"
        );
        Ok(Some(d))
    }
}

impl Handler<EvalReport> for Feedback {
    type Result = ();
    fn handle(&mut self, msg: EvalReport, _: &mut Context<Self>) {
        mark(
            &self.store,
            Stage::Feedback,
            StageState::Running,
            Some(&format!("deciding on adapter v{}", msg.adapter_id)),
        );
        let result = self.decide_one(msg.adapter_id);
        mark(&self.store, Stage::Feedback, StageState::Idle, None);
        if let Ok(Some(d)) = &result {
            self.supervisor.do_send(Decided {
                adapter_id: msg.adapter_id,
                promoted: d.promote,
            });
        }
        self.done.do_send(StageDone {
            stage: Stage::Feedback,
            result: result.map(|_| ()).map_err(StageError::from),
        });
    }
}

impl Handler<UseConfig> for Feedback {
    type Result = ();
    fn handle(&mut self, msg: UseConfig, _: &mut Context<Self>) {
        self.config = msg.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StreamState;
    use serde_json::json;

    fn adapter(id: i64, parent: Option<i64>, stream: i64) -> AdapterRow {
        AdapterRow {
            id,
            parent_id: parent,
            stream_id: stream,
            attempt: 1,
            path: Default::default(),
            hyperparams: json!({}),
            train_log: None,
            decision: None,
            state: AdapterState::Candidate,
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
            n_eval: 2,
            path: Default::default(),
            state: StreamState::Trained,
        }
    }

    fn cells(v: &[(i64, i64, f64)]) -> Vec<EvalRow> {
        v.iter()
            .map(|&(a, s, p)| crate::eval::tests::cell(a, s, p))
            .collect()
    }

    #[test]
    fn promotes_rejects_and_waits() {
        let cfg = FeedbackConfig::default();
        let streams = [stream(1), stream(2)];
        // v2 trained on stream 2 from v1; v1 was promoted after stream 1.
        let c = adapter(2, Some(1), 2);
        let good = cells(&[(1, 1, 10.0), (1, 2, 20.0), (2, 1, 10.5), (2, 2, 15.0)]);
        let d = decide(&cfg, &c, &streams, &good).unwrap();
        assert!(d.promote, "{d:?}");
        assert!((d.max_forgetting - 0.05).abs() < 1e-9);
        // Forgot 30% of stream 1: rejected, with the reason.
        let forgot = cells(&[(1, 1, 10.0), (1, 2, 20.0), (2, 1, 13.0), (2, 2, 15.0)]);
        let d = decide(&cfg, &c, &streams, &forgot).unwrap();
        assert!(!d.promote);
        assert!(d.reasons[1].contains("exceeds"), "{:?}", d.reasons);
        // No improvement on the new stream: rejected unless improvement is not required.
        let flat = cells(&[(1, 1, 10.0), (1, 2, 20.0), (2, 1, 10.0), (2, 2, 21.0)]);
        assert!(!decide(&cfg, &c, &streams, &flat).unwrap().promote);
        let lax = FeedbackConfig {
            require_improvement: false,
            ..cfg.clone()
        };
        assert!(decide(&lax, &c, &streams, &flat).unwrap().promote);
        // The first stream is compared with the base model (version 0).
        let first = adapter(1, None, 1);
        let d = decide(
            &cfg,
            &first,
            &streams,
            &cells(&[(0, 1, 30.0), (1, 1, 12.0)]),
        )
        .unwrap();
        assert!(d.promote && d.reference == 0 && d.forgetting.is_empty());
        // Missing cells: no decision yet.
        let e = decide(&cfg, &c, &streams, &cells(&[(2, 2, 15.0)])).unwrap_err();
        assert!(e.to_string().contains("version 1 on stream 2"), "{e}");
    }
}
