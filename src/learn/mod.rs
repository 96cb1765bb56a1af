//! The learning stages: from a sealed stream to a decided version.
//!
//! # Layout
//!
//! - [`spec`]: the stage's settings, resolved from the config once at its top.
//! - [`pipeline`]: train the next stream into a candidate, and `learn`
//!   (train → evaluate → decide, again while the policy asks for another
//!   attempt).
//! - [`replay`]: the replay pool: a bounded reservoir per earlier stream, read
//!   lazily, weighted toward the streams forgotten most recently.
//! - [`matrix`]: the perplexity matrix in one home: its figures
//!   (forgetting, backward transfer), the probe set, filling its cells
//!   (`fill`) and their bootstrap intervals (`stats`).
//! - [`policy`]: the feedback policy: promote, retrain with replay and a lower
//!   rate, or give a stream up (docs/continual-learning.md).
//! - [`records`]: a version's hyper-parameters and outcome, typed (the store
//!   keeps them as JSON).
//! - [`lineage`]: the chain of versions, base snapshots and merges, and the
//!   version to serve.
//!
//! Publishing the promoted versions is the next stage, [`crate::publish`].

pub mod lineage;
pub mod matrix;
pub mod pipeline;
pub mod policy;
pub mod records;
pub mod replay;
pub mod spec;
