//! Feedback: applies the policy of [`crate::policy`] to each candidate once
//! the Evaluator has filled its row of the matrix — promote, retrain the
//! stream (the Trainer is kicked through the supervisor), or give the stream
//! up. The decision, its reasons and numbers are stored on the adapter, in
//! `adapter_events`, and logged.

use std::sync::Arc;

use actix::prelude::*;

use super::messages::{Decided, EvalReport, StageDone};
use super::{Stage, StageError, UseConfig, mark};
use crate::config::Config;
use crate::policy::Action;
use crate::store::{Actor as By, StageState, Store};

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

impl Handler<EvalReport> for Feedback {
    type Result = ();
    fn handle(&mut self, msg: EvalReport, _: &mut Context<Self>) {
        mark(
            &self.store,
            Stage::Feedback,
            StageState::Running,
            Some(&format!("deciding on adapter v{}", msg.adapter_id)),
        );
        let result =
            crate::policy::decide_stored(&self.config, &self.store, msg.adapter_id, By::Daemon);
        mark(&self.store, Stage::Feedback, StageState::Idle, None);
        if let Ok(Some(d)) = &result {
            self.supervisor.do_send(Decided {
                adapter_id: msg.adapter_id,
                promoted: d.action == Action::Promote,
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
