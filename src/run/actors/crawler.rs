//! Crawler: runs sources when the schedule (or the supervisor) says so, and
//! hands the ids of what it stored to the Preprocessor.

use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;

use super::messages::{RawBatch, StageDone};
use super::preprocessor::Preprocessor;
use super::schedule::Scheduled;
use super::{Busy, MAILBOX, Stage, UseConfig, mark};
use crate::config::Config;
use crate::data::sources::run_source;
use crate::util::http::Http;
use lorastream_store::{StageState, Store};

/// Run one source (`Some(name)`) or every enabled source (`None`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Crawl {
    pub source: Option<String>,
}

pub struct Crawler {
    pub config: Arc<Config>,
    pub store: Rc<Store>,
    pub http: Http,
    pub next: Addr<Preprocessor>,
    pub supervisor: Recipient<StageDone>,
    pub busy: Busy,
}

impl Actor for Crawler {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Handler<Crawl> for Crawler {
    // One crawl at a time: the next message waits until this one is done.
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Crawl, _: &mut Context<Self>) -> Self::Result {
        let config = Arc::clone(&self.config);
        let store = Rc::clone(&self.store);
        let http = self.http.clone();
        let next = self.next.clone();
        let supervisor = self.supervisor.clone();
        let busy = self.busy.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let sources: Vec<_> = config
                    .sources
                    .iter()
                    .filter(|s| match &msg.source {
                        Some(name) => &s.name == name,
                        None => s.enabled,
                    })
                    .cloned()
                    .collect();
                let state_dir = config.state_dir();
                for src in sources {
                    let Some(_guard) = busy.begin(Scheduled::Crawl(src.name.clone())) else {
                        tracing::info!(source = %src.name, "crawl of this source still running; skipped");
                        continue;
                    };
                    mark(&store, Stage::Crawler, StageState::Running, Some(&format!("crawling {}", src.name)));
                    let report = run_source(&http, &store, &state_dir, &src, config.daemon.max_item_failures).await;
                    // Also when nothing is new: leftovers of an earlier run get processed.
                    if next
                        .send(RawBatch {
                            source: src.name.clone(),
                            ids: report.new_ids,
                        })
                        .await
                        .is_err()
                    {
                        tracing::warn!("preprocessor is gone; raw items wait in the store");
                    }
                }
                mark(&store, Stage::Crawler, StageState::Idle, None);
                supervisor.do_send(StageDone {
                    stage: Stage::Crawler,
                    result: Ok(()),
                });
            }
            .into_actor(self),
        ))
    }
}

impl Handler<UseConfig> for Crawler {
    type Result = ();
    fn handle(&mut self, msg: UseConfig, _: &mut Context<Self>) {
        self.config = msg.0;
    }
}
