//! Summarizer: condenses long answers (see [`crate::data::summarize`]), seals ready
//! examples into streams, and tells the Trainer about each new stream.

use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;

use super::messages::{Examples, StageDone, StreamSealed};
use super::schedule::Scheduled;
use super::trainer::Trainer;
use super::{Bell, Busy, Kick, MAILBOX, Stage, StageError, UseConfig, mark};
use crate::config::Config;
use crate::data::summarize::Summarizer as Condenser;
use crate::util::http::Http;
use lorastream_store::{StageState, Store};

/// Seal what is ready (the `[schedule] seal` job).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Seal;

pub struct Summarizer {
    pub config: Arc<Config>,
    pub store: Rc<Store>,
    pub http: Http,
    pub condenser: Rc<Condenser>,
    pub next: Bell<Trainer>,
    pub supervisor: Recipient<StageDone>,
    pub busy: Busy,
}

impl Summarizer {
    pub fn condenser(config: &Config, http: &Http) -> Rc<Condenser> {
        Rc::new(Condenser::for_model(
            &config.summarizer,
            &config.base_model(),
            http.clone(),
        ))
    }

    /// Condenses every `new` example, then seals while enough are ready.
    fn pass(&mut self, summarize: bool) -> AtomicResponse<Self, ()> {
        let config = Arc::clone(&self.config);
        let store = Rc::clone(&self.store);
        let condenser = Rc::clone(&self.condenser);
        let next = self.next.clone();
        let supervisor = self.supervisor.clone();
        let busy = self.busy.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let result: Result<(), StageError> = async {
                    if summarize {
                        mark(
                            &store,
                            Stage::Summarizer,
                            StageState::Running,
                            Some("condensing long answers"),
                        );
                        condenser.run(&store).await?;
                    }
                    let _guard = busy.begin(Scheduled::Seal);
                    mark(
                        &store,
                        Stage::Summarizer,
                        StageState::Running,
                        Some("sealing streams"),
                    );
                    let sealed = crate::data::streams::seal_ready(
                        &store,
                        &config.state_dir(),
                        &config.streams,
                        false,
                    )?;
                    // A notification, not `send().await`: that would wait for the
                    // whole training run and stall crawling behind it. The stream
                    // is in the store; with a notification pending the trainer
                    // finds it there.
                    for stream_id in sealed.into_iter().map(|s| s.id) {
                        if !next.ring(StreamSealed { stream_id }) {
                            tracing::info!(
                                stream = stream_id,
                                "trainer busy; the stream waits in the store"
                            );
                        }
                    }
                    Ok(())
                }
                .await;
                mark(&store, Stage::Summarizer, StageState::Idle, None);
                supervisor.do_send(StageDone {
                    stage: Stage::Summarizer,
                    result,
                });
            }
            .into_actor(self),
        ))
    }
}

impl Actor for Summarizer {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Handler<Examples> for Summarizer {
    type Result = AtomicResponse<Self, ()>;
    fn handle(&mut self, _: Examples, _: &mut Context<Self>) -> Self::Result {
        self.pass(true)
    }
}

impl Handler<Kick> for Summarizer {
    type Result = AtomicResponse<Self, ()>;
    fn handle(&mut self, _: Kick, _: &mut Context<Self>) -> Self::Result {
        self.pass(true)
    }
}

impl Handler<Seal> for Summarizer {
    type Result = AtomicResponse<Self, ()>;
    fn handle(&mut self, _: Seal, _: &mut Context<Self>) -> Self::Result {
        self.pass(false)
    }
}

impl Handler<UseConfig> for Summarizer {
    type Result = ();
    fn handle(&mut self, msg: UseConfig, _: &mut Context<Self>) {
        self.condenser = Self::condenser(&msg.0, &self.http);
        self.config = msg.0;
    }
}
