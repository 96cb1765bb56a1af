//! Evaluator: fills the perplexity matrix (see [`crate::pipeline::evaluate`])
//! on its own thread when a candidate arrives or the eval schedule fires, then
//! hands every undecided candidate to Feedback.

use std::sync::Arc;

use actix::prelude::*;

use super::feedback::Feedback;
use super::messages::{Candidate, EvalReport, StageDone};
use super::{Busy, Kick, Ping, Stage, StageError, UseConfig, block_on, catch, mark};
use crate::config::Config;
use crate::store::{AdapterState, StageState, Store};

pub struct Evaluator {
    pub config: Arc<Config>,
    pub store: Option<Store>,
    pub next: Addr<Feedback>,
    pub supervisor: Recipient<StageDone>,
    pub busy: Busy,
}

impl Actor for Evaluator {
    type Context = SyncContext<Self>;
}

impl Evaluator {
    fn pass(&mut self, why: &str) {
        let Some(_guard) = self.busy.begin("eval") else {
            return;
        };
        let result = self.try_pass(why);
        if let Some(store) = &self.store {
            mark(store, Stage::Evaluator, StageState::Idle, None);
        }
        self.supervisor.do_send(StageDone {
            stage: Stage::Evaluator,
            result,
        });
    }

    fn try_pass(&mut self, why: &str) -> Result<(), StageError> {
        let config = Arc::clone(&self.config);
        let store = super::lazy_store(&mut self.store, &config)?;
        mark(store, Stage::Evaluator, StageState::Running, Some(why));
        let started = std::time::Instant::now();
        let matrix = catch("evaluation", || crate::pipeline::evaluate(&config, store))??;
        tracing::info!(
            versions = matrix.versions.len(),
            streams = matrix.streams.len(),
            average_ppl = matrix.average_ppl,
            backward_transfer = matrix.backward_transfer,
            duration_ms = started.elapsed().as_millis() as u64,
            "evaluation matrix filled"
        );
        let waiting: Vec<i64> = store
            .adapters()?
            .iter()
            .filter(|a| a.state == AdapterState::Candidate)
            .map(|a| a.id)
            .collect();
        for adapter_id in waiting {
            if block_on(self.next.send(EvalReport { adapter_id })).is_err() {
                tracing::warn!("feedback is gone; the candidate waits in the store");
            }
        }
        Ok(())
    }
}

impl Handler<Candidate> for Evaluator {
    type Result = ();
    fn handle(&mut self, msg: Candidate, _: &mut SyncContext<Self>) {
        self.pass(&format!(
            "evaluating adapter v{} (stream {})",
            msg.adapter_id, msg.stream_id
        ));
    }
}

impl Handler<Kick> for Evaluator {
    type Result = ();
    fn handle(&mut self, _: Kick, _: &mut SyncContext<Self>) {
        self.pass("filling missing cells");
    }
}

impl Handler<Ping> for Evaluator {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut SyncContext<Self>) {}
}

impl Handler<UseConfig> for Evaluator {
    type Result = ();
    fn handle(&mut self, msg: UseConfig, _: &mut SyncContext<Self>) {
        self.config = msg.0;
    }
}
