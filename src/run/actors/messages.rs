//! The payloads stages pass along the pipeline (DESIGN.md §1). Each carries
//! ids of rows already committed to the store, never the only copy of data:
//! a stage that receives one reads the store, so a lost or repeated message
//! costs at most a repeated, idempotent pass.

use actix::Message;

/// Crawler → Preprocessor: raw items stored by a source run.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RawBatch {
    pub source: String,
    pub ids: Vec<i64>,
}

/// Preprocessor → Summarizer: examples made (state `new`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Examples {
    pub ids: Vec<i64>,
}

/// Summarizer → Trainer: a stream was sealed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct StreamSealed {
    pub stream_id: i64,
}

/// Trainer → Evaluator: a candidate adapter to measure.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Candidate {
    pub adapter_id: i64,
    pub stream_id: i64,
}

/// Evaluator → Feedback: the candidate's row of the matrix is complete.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct EvalReport {
    pub adapter_id: i64,
}

/// Feedback → Supervisor: a candidate was promoted or rejected.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Decided {
    pub adapter_id: i64,
    pub promoted: bool,
}

/// Any stage → Supervisor: how a unit of work ended, for status, backoff
/// and restarts.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StageDone {
    pub stage: super::Stage,
    /// `Err`: the supervisor records it and retries after a backoff.
    pub result: Result<(), super::StageError>,
}
