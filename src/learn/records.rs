//! What a version's row records, typed: the hyper-parameters it was made
//! with and the outcome of its evaluation — the policy's [`Decision`] (with
//! its [`Action`] and the next [`Attempt`]) or a failure. The store keeps
//! both as JSON (`adapters.hyperparams`, `adapters.decision`); they are
//! written from these types and read back into them here. A figure with its
//! interval ([`Estimate`]) is recorded as such.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use crate::learn::spec::PolicySpec;
use lorastream_base::text_enum;
use lorastream_ml::train::TrainSpec;
use lorastream_store::AdapterRow;

text_enum! {
    /// What the policy does with a candidate.
    pub enum Action {
        Promote = "promote",
        /// Rejected; its stream is trained again (attempt + 1).
        Retrain = "retrain",
        /// Rejected at the last attempt: the stream is `not_learned`.
        GiveUp = "give_up",
        /// Rejected, and its stream done: the served version already knows
        /// it (well below the base) and training adds too little.
        AlreadyKnown = "already_known",
    }
}

text_enum! {
    /// Why a candidate failed, which decides the repair.
    pub enum Cause {
        /// A figure is not finite: retried as for forgetting.
        NotFinite = "not_finite",
        /// An earlier stream was forgotten past its limit: more replay, a lower rate.
        Forgetting = "forgetting",
        /// The probe set got worse past its limit: as for forgetting.
        Probe = "probe",
        /// The new stream improved too little: more epochs, a higher rate.
        UnderLearning = "under_learning",
    }
}

/// The settings of attempt `number` at a stream: replay, learning rate,
/// epochs, and the cause of the retry that chose them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: i64,
    pub replay_fraction: f64,
    pub lr: f64,
    /// None: `[train] epochs_per_stream`.
    #[serde(default)]
    pub epochs: Option<usize>,
    #[serde(default)]
    pub cause: Option<Cause>,
}

impl Attempt {
    /// Attempt 1 uses `[train]`; each retry adds `replay_step` to the replay
    /// share (up to `replay_max`) and multiplies the learning rate by `lr_decay`.
    pub fn nth(p: &PolicySpec, number: i64) -> Attempt {
        let retries = (number - 1).max(0);
        if !p.feedback.enabled || retries == 0 {
            return Attempt {
                number,
                replay_fraction: p.replay_fraction,
                lr: p.lr,
                epochs: None,
                cause: None,
            };
        }
        Attempt {
            number,
            replay_fraction: (p.replay_fraction + retries as f64 * p.feedback.replay_step)
                .min(p.feedback.replay_max.max(p.replay_fraction)),
            lr: p.lr * p.feedback.lr_decay.powi(retries as i32),
            epochs: None,
            cause: Some(Cause::Forgetting),
        }
    }

    /// The attempt after this one failed for `cause`: forgetting (or the
    /// probe set, or a non-finite figure) → more replay (up to
    /// `replay_max`) and the rate × `lr_decay`; too little gain →
    /// `more_epochs` more epochs and the rate × `lr_raise`.
    pub fn after(&self, p: &PolicySpec, cause: Cause) -> Attempt {
        let f = &p.feedback;
        let mut next = Attempt {
            number: self.number + 1,
            cause: Some(cause),
            ..*self
        };
        if cause == Cause::UnderLearning {
            next.epochs = Some(self.epochs.unwrap_or(p.epochs) + f.more_epochs);
            next.lr = self.lr * f.lr_raise;
        } else {
            next.replay_fraction =
                (self.replay_fraction + f.replay_step).min(f.replay_max.max(self.replay_fraction));
            next.lr = self.lr * f.lr_decay;
        }
        next
    }

    /// The settings a version was trained with (its hyper-parameters), as
    /// the attempt it was.
    pub fn of(p: &PolicySpec, row: &AdapterRow) -> Attempt {
        match serde_json::from_value::<Hyperparams>(row.hyperparams.clone()) {
            Ok(Hyperparams::Lora(spec)) => Attempt {
                number: row.attempt,
                replay_fraction: spec.replay_fraction,
                lr: spec.lr,
                epochs: Some(spec.epochs),
                cause: None,
            },
            _ => Attempt::nth(p, row.attempt),
        }
    }

    /// The training spec of this attempt: `spec` with its replay share,
    /// learning rate and epochs (the only place they are set after the config).
    pub fn apply(&self, spec: TrainSpec) -> TrainSpec {
        TrainSpec {
            replay_fraction: self.replay_fraction,
            lr: self.lr,
            epochs: self.epochs.unwrap_or(spec.epochs),
            ..spec
        }
    }
}

/// A decision on a candidate, as recorded with it (`adapters.decision`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub action: Action,
    pub reasons: Vec<String>,
    pub stream: i64,
    pub attempt: i64,
    /// The version compared with (the parent; 0 = the base model).
    pub reference: i64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub new_ppl: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub reference_ppl: f64,
    /// 1 − new / reference.
    #[serde(deserialize_with = "f64_or_nan")]
    pub gain: f64,
    /// Per earlier stream: [`crate::learn::matrix::forgetting`].
    #[serde(deserialize_with = "map_f64_or_nan")]
    pub forgetting: BTreeMap<i64, f64>,
    pub max_forgetting: Option<f64>,
    /// [`crate::learn::matrix::forgetting`] of the probe set (column 0).
    pub probe_change: Option<f64>,
    /// The settings of the next attempt (`retrain`).
    pub next: Option<Attempt>,
    /// Why it failed (None: it passed).
    #[serde(default)]
    pub cause: Option<Cause>,
    /// The gain with its interval (paired bootstrap; zero width when the
    /// cells have no per-example figures).
    #[serde(default)]
    pub gain_interval: Option<Estimate>,
    /// Per earlier stream: the forgetting with its interval.
    #[serde(default, deserialize_with = "by_stream")]
    pub forgetting_intervals: BTreeMap<i64, Estimate>,
    /// Figures whose interval straddled their limit ("gain", "forgetting of
    /// stream 3", "probe set").
    #[serde(default)]
    pub inconclusive: Vec<String>,
}

/// `adapters.hyperparams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Hyperparams {
    /// A LoRA attempt: the training spec it ran with.
    Lora(TrainSpec),
    /// A merge snapshot: the version merged, and the base it was merged into.
    Merge { merged: i64, base: PathBuf },
}

/// `adapters.decision`: what became of a version after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    /// The feedback policy decided on it.
    Decided(Box<Decision>),
    /// Training failed: why.
    Failed { error: String },
}

impl Outcome {
    /// The decision's reasons, or the failure.
    pub fn reasons(&self) -> Vec<String> {
        match self {
            Outcome::Decided(d) => d.reasons.clone(),
            Outcome::Failed { error } => vec![error.clone()],
        }
    }

    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Outcome::Decided(d) => Some(d.as_ref()),
            Outcome::Failed { .. } => None,
        }
    }
}

/// The version's outcome, if it has one this version of lorastream can read.
pub fn outcome(row: &AdapterRow) -> Option<Outcome> {
    serde_json::from_value(row.decision.clone()?).ok()
}

/// JSON has no NaN: serde_json writes a non-finite figure as `null`, which
/// reads back as NaN (a decision on a NaN is recorded, and must read back).
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// As [`f64_or_nan`], for each value of a map keyed by stream id.
fn map_f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<i64, f64>, D::Error> {
    let m: BTreeMap<i64, Option<f64>> = by_stream(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

/// A map keyed by stream id. JSON keys are strings: they are read as text
/// and parsed, so that this also works inside [`Outcome`]'s untagged
/// buffering (which cannot read a string key as an integer).
fn by_stream<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<BTreeMap<i64, T>, D::Error> {
    let m = BTreeMap::<String, T>::deserialize(d)?;
    m.into_iter()
        .map(|(k, v)| {
            let id = k.parse().map_err(|_| {
                serde::de::Error::custom(format!("stream id {k:?} is not an integer"))
            })?;
            Ok((id, v))
        })
        .collect()
}

/// A figure with its confidence interval. JSON has no NaN: a non-finite
/// end is written `null` and reads back as NaN.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    #[serde(deserialize_with = "nan_if_null")]
    pub value: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub lo: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub hi: f64,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Estimate {
    /// A figure known exactly (no per-example data): a zero-width interval.
    pub fn point(value: f64) -> Estimate {
        Estimate {
            value,
            lo: value,
            hi: value,
        }
    }

    /// `f` applied to the value and both ends (`f` increasing).
    pub fn map(self, f: impl Fn(f64) -> f64) -> Estimate {
        Estimate {
            value: f(self.value),
            lo: f(self.lo),
            hi: f(self.hi),
        }
    }

    /// `f` applied, for a decreasing `f` (the ends swap).
    pub fn map_down(self, f: impl Fn(f64) -> f64) -> Estimate {
        Estimate {
            value: f(self.value),
            lo: f(self.hi),
            hi: f(self.lo),
        }
    }

    pub fn is_finite(&self) -> bool {
        self.value.is_finite() && self.lo.is_finite() && self.hi.is_finite()
    }

    /// Where the interval lies against `limit`.
    pub fn against(&self, limit: f64) -> Side {
        if self.lo > limit {
            Side::Above
        } else if self.hi < limit {
            Side::Below
        } else {
            Side::Straddles
        }
    }

    /// "1.7% ± 2.4%" (half the interval's width), in percent.
    pub fn pct(&self) -> String {
        let half = (self.hi - self.lo) / 2.0;
        if half == 0.0 {
            format!("{:+.1}%", self.value * 100.0)
        } else {
            format!("{:+.1}% ± {:.1}%", self.value * 100.0, half * 100.0)
        }
    }
}

/// An interval against a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Entirely above it.
    Above,
    /// Entirely below it.
    Below,
    /// The limit lies inside: the data cannot tell.
    Straddles,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(gain: f64) -> Decision {
        Decision {
            action: Action::Retrain,
            reasons: vec!["a figure is not finite".into()],
            stream: 2,
            attempt: 1,
            reference: 1,
            new_ppl: 12.0,
            reference_ppl: f64::NAN,
            gain,
            forgetting: BTreeMap::from([(1, f64::NAN), (3, 0.01)]),
            max_forgetting: Some(0.01),
            probe_change: None,
            next: Some(Attempt {
                number: 2,
                replay_fraction: 0.25,
                lr: 1e-4,
                epochs: None,
                cause: Some(Cause::Forgetting),
            }),
            cause: Some(Cause::Forgetting),
            gain_interval: None,
            forgetting_intervals: BTreeMap::new(),
            inconclusive: Vec::new(),
        }
    }

    #[test]
    fn a_decision_reads_back_typed_nan_included() {
        let mut d = decision(f64::NAN);
        let e = Estimate {
            value: 0.01,
            lo: f64::NAN,
            hi: 0.02,
        };
        d.forgetting_intervals = BTreeMap::from([(1, e), (3, Estimate::point(0.01))]);
        d.gain_interval = Some(e);
        let json = serde_json::to_value(&d).unwrap();
        assert!(json["reference_ppl"].is_null(), "JSON has no NaN: {json}");
        let Some(Outcome::Decided(back)) = serde_json::from_value(json).ok() else {
            panic!("not read back as a decision");
        };
        assert!(back.reference_ppl.is_nan() && back.gain.is_nan() && back.forgetting[&1].is_nan());
        assert_eq!((back.forgetting[&3], back.next), (0.01, d.next));
        // Intervals per stream read back too (string keys, a NaN end).
        assert_eq!(back.forgetting_intervals[&3], Estimate::point(0.01));
        assert!(
            back.forgetting_intervals[&1].lo.is_nan() && back.gain_interval.unwrap().hi == 0.02
        );
        let failed = serde_json::json!({"error": "no trainable examples"});
        assert_eq!(
            serde_json::from_value::<Outcome>(failed).unwrap().reasons(),
            vec!["no trainable examples".to_string()]
        );
    }

    #[test]
    fn hyperparams_tell_a_merge_from_a_lora_attempt() {
        let merge = serde_json::json!({"merged": 3, "base": "/models/base"});
        assert_eq!(
            serde_json::from_value::<Hyperparams>(merge).unwrap(),
            Hyperparams::Merge {
                merged: 3,
                base: "/models/base".into()
            }
        );
        let spec = crate::config::Config::default().train_spec();
        let lora = serde_json::to_value(Hyperparams::Lora(spec.clone())).unwrap();
        assert_eq!(
            serde_json::from_value::<Hyperparams>(lora).unwrap(),
            Hyperparams::Lora(spec)
        );
    }
}
