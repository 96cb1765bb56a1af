//! Preprocessor: raw items → chat examples (see [`crate::data::preprocess`]), then
//! hands the new example ids to the Summarizer.

use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;

use super::messages::{Examples, RawBatch, StageDone};
use super::summarizer::Summarizer;
use super::{Kick, MAILBOX, Stage, UseConfig, mark};
use crate::config::Config;
use lorastream_store::{StageState, Store};

pub struct Preprocessor {
    pub config: Arc<Config>,
    pub store: Rc<Store>,
    pub next: Addr<Summarizer>,
    pub supervisor: Recipient<StageDone>,
}

impl Actor for Preprocessor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Preprocessor {
    /// Processes every `new` raw item (whatever the message listed) and
    /// forwards the examples made.
    fn pass(&mut self, why: &str) -> AtomicResponse<Self, ()> {
        mark(
            &self.store,
            Stage::Preprocessor,
            StageState::Running,
            Some(why),
        );
        let result = crate::data::preprocess::run(&self.store, &self.config.preprocess);
        mark(&self.store, Stage::Preprocessor, StageState::Idle, None);
        let next = self.next.clone();
        let supervisor = self.supervisor.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let done = match result {
                    Ok(report) => {
                        let _ = next
                            .send(Examples {
                                ids: report.example_ids,
                            })
                            .await;
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                };
                supervisor.do_send(StageDone {
                    stage: Stage::Preprocessor,
                    result: done,
                });
            }
            .into_actor(self),
        ))
    }
}

impl Handler<RawBatch> for Preprocessor {
    type Result = AtomicResponse<Self, ()>;
    fn handle(&mut self, msg: RawBatch, _: &mut Context<Self>) -> Self::Result {
        self.pass(&format!("{} new items from {}", msg.ids.len(), msg.source))
    }
}

impl Handler<Kick> for Preprocessor {
    type Result = AtomicResponse<Self, ()>;
    fn handle(&mut self, _: Kick, _: &mut Context<Self>) -> Self::Result {
        self.pass("items left from before")
    }
}

impl Handler<UseConfig> for Preprocessor {
    type Result = ();
    fn handle(&mut self, msg: UseConfig, _: &mut Context<Self>) {
        self.config = msg.0;
    }
}
