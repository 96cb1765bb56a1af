//! The feedback policy (DESIGN.md §4, docs/continual-learning.md): once a
//! candidate's row of the matrix is filled, promote it; or retrain its
//! stream from the same parent with the repair its failure calls for (more
//! replay and a lower rate for forgetting; more epochs and a higher rate for
//! learning too little); or call the stream `already_known` (the served
//! lineage is already well below the base on it, and the candidate gains
//! less than `known_min_gain` both on it and over every stream so far); or
//! — after `max_attempts` — give it up as `not_learned` and keep serving the
//! promoted version.
//! Every figure carries a paired bootstrap interval ([`figures`]): a figure
//! the evaluation set is too small to judge is said to be inconclusive and
//! counted as `[feedback] inconclusive` says. Every number is checked to be
//! finite; a NaN anywhere is a refusal with that reason.

mod figures;

use figures::Figures;

use crate::learn::lineage;
use crate::learn::lineage::RowKey;
pub use crate::learn::records::{Action, Attempt, Cause, Decision};
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
    let verdict = figures.judge(p);
    let mut reasons = verdict.reasons;
    let (attempt, stream) = (candidate.attempt, figures.stream);
    let f = &p.feedback;
    let known = figures.known_to(p);
    let (action, next) = match verdict.cause {
        _ if !f.enabled => {
            reasons.push("feedback is off: promoted without checks".into());
            (Action::Promote, None)
        }
        None => (Action::Promote, None),
        Some(Cause::UnderLearning) if known.is_some() => {
            reasons.push(format!(
                "already known: version {} was already {:.1}% below the base on stream {stream} \
                 (known_gain {:.1}%), and training adds {}{}, short of {:.1}%; the stream is \
                 done, version {} stays",
                figures.reference,
                known.unwrap_or_default() * 100.0,
                f.known_gain * 100.0,
                figures.gain.pct(),
                figures
                    .overall
                    .map(|e| format!(" ({} over every stream)", e.pct()))
                    .unwrap_or_default(),
                f.known_min_gain * 100.0,
                figures.reference,
            ));
            (Action::AlreadyKnown, None)
        }
        Some(cause) if attempt < f.max_attempts as i64 => {
            let next = Attempt::of(p, candidate).after(p, cause);
            reasons.push(format!(
                "retrain for {cause}: attempt {} of {} with replay {:.2}, lr {:.2e}, {} epochs",
                next.number,
                f.max_attempts,
                next.replay_fraction,
                next.lr,
                next.epochs.unwrap_or(p.epochs)
            ));
            (Action::Retrain, Some(next))
        }
        Some(_) => {
            reasons.push(format!(
                "attempt {attempt} was the last of {}: stream {stream} is not learned; its data stays for replay",
                f.max_attempts
            ));
            (Action::GiveUp, None)
        }
    };
    Ok(Decision {
        action,
        reasons,
        stream,
        attempt,
        reference: figures.reference,
        new_ppl: figures.new_ppl,
        reference_ppl: figures.reference_ppl,
        gain: figures.gain.value,
        max_forgetting: figures.worst().map(|w| w.1.value),
        forgetting: figures
            .forgetting
            .iter()
            .map(|(s, e)| (*s, e.value))
            .collect(),
        probe_change: figures.probe_change.map(|e| e.value),
        next,
        cause: verdict.cause.filter(|_| action != Action::Promote),
        gain_interval: Some(figures.gain),
        forgetting_intervals: figures.forgetting,
        inconclusive: verdict.inconclusive,
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
        // The stream is `trained` already (its candidate was): it stays so.
        Action::AlreadyKnown => (AdapterState::Rejected, None),
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
mod tests;
