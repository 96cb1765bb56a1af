//! Feedback: applies the policy of [`crate::learn::policy`] to each candidate once
//! the Evaluator has filled its row of the matrix — promote, retrain the
//! stream (the Trainer is kicked through the supervisor), or give the stream
//! up. The decision, its reasons and numbers are stored on the adapter, in
//! `adapter_events`, and logged.

use std::sync::Arc;

use actix::prelude::*;

use super::messages::{Decided, EvalReport, StageDone};
use super::{Stage, StageError, UseConfig, mark};
use crate::config::Config;
use crate::learn::policy::Action;
use crate::learn::policy::PolicySpec;
use lorastream_store::{Actor as By, ItemKind, StageState, Store};

pub struct Feedback {
    pub config: Arc<Config>,
    pub store: Store,
    pub supervisor: Recipient<Decided>,
    pub done: Recipient<StageDone>,
    /// Told after each promotion (it publishes in the background).
    pub publisher: Recipient<super::publisher::Publish>,
}

impl Actor for Feedback {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::MAILBOX);
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
        let result = crate::learn::policy::decide_stored(
            &PolicySpec::from_config(&self.config),
            &self.store,
            msg.adapter_id,
            By::Daemon,
        );
        mark(&self.store, Stage::Feedback, StageState::Idle, None);
        let decided = match &result {
            Ok(Some(d)) => Some(d.action == Action::Promote),
            Ok(None) => None,
            Err(e) => self.count_failure(msg.adapter_id, e).then_some(false),
        };
        if decided == Some(true) {
            self.publisher.do_send(super::publisher::Publish);
        }
        if let Some(promoted) = decided {
            self.supervisor.do_send(Decided {
                adapter_id: msg.adapter_id,
                promoted,
            });
        }
        self.done.do_send(StageDone {
            stage: Stage::Feedback,
            result: result.map(|_| ()).map_err(StageError::from),
        });
    }
}

impl Feedback {
    /// Counts a failed decision against the candidate; at `max_item_failures`
    /// it fails with its stream, so the trainer goes on. True when it did.
    fn count_failure(&self, adapter_id: i64, e: &crate::learn::policy::PolicyError) -> bool {
        // A store error is not about the candidate: retried, never counted.
        if matches!(e, crate::learn::policy::PolicyError::Store(_)) {
            return false;
        }
        let max = self.config.daemon.max_item_failures;
        let counted = self.store.adapter(adapter_id).and_then(|a| {
            let stream = a.map(|a| a.stream_id);
            let key = adapter_id.to_string();
            let f =
                self.store
                    .count_failure(ItemKind::Version, &key, &e.to_string(), max, stream)?;
            Ok((f, stream))
        });
        match counted {
            Ok((f, Some(stream))) if f.set_aside => {
                tracing::error!(adapter = adapter_id, stream, error = %e, "candidate cannot be decided; it and its stream failed, training goes on");
                true
            }
            Ok(_) => false,
            Err(se) => {
                tracing::warn!(error = %se, "cannot record the failure");
                false
            }
        }
    }
}

impl Handler<UseConfig> for Feedback {
    type Result = ();
    fn handle(&mut self, msg: UseConfig, _: &mut Context<Self>) {
        self.config = msg.0;
    }
}
