//! The stages the supervisor starts, the thread each runs on, and how they
//! are wired to one another (DESIGN.md §1).

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix::prelude::*;

use super::crawler::Crawler;
use super::evaluator::Evaluator;
use super::feedback::Feedback;
use super::preprocessor::Preprocessor;
use super::summarizer::Summarizer;
use super::supervisor::Supervisor;
use super::trainer::Trainer;
use super::{Bell, Busy, Pending};
use crate::config::Config;
use crate::http::Http;
use crate::store::Store;

pub(super) struct Stages {
    pub(super) crawler: Addr<Crawler>,
    pub(super) preprocessor: Addr<Preprocessor>,
    pub(super) summarizer: Addr<Summarizer>,
    pub(super) trainer: Bell<Trainer>,
    pub(super) evaluator: Bell<Evaluator>,
    pub(super) feedback: Addr<Feedback>,
}

/// Store connections of the async stages, opened by `start` (so a failure is
/// its error, not a panic inside an arbiter).
pub(super) struct PendingStores {
    pub(super) crawler: Store,
    pub(super) preprocessor: Store,
    pub(super) summarizer: Store,
    pub(super) feedback: Store,
}

impl Stages {
    /// Starts every stage: Feedback on the system arbiter, Trainer and
    /// Evaluator on a `SyncArbiter` thread each (behind a [`Bell`]), Crawler,
    /// Preprocessor and Summarizer on one arbiter thread of their own.
    pub(super) fn spawn(
        me: Addr<Supervisor>,
        config: &Arc<Config>,
        busy: &Busy,
        stop: &Arc<AtomicBool>,
        p: PendingStores,
    ) -> Stages {
        let config = Arc::clone(config);
        let http = Http::new();
        let feedback = Feedback {
            config: Arc::clone(&config),
            store: p.feedback,
            supervisor: me.clone().recipient(),
            done: me.clone().recipient(),
        }
        .start();
        let evaluator = {
            let (config, feedback, me, busy) = (
                Arc::clone(&config),
                feedback.clone(),
                me.clone(),
                busy.clone(),
            );
            let pending = Pending::default();
            let flag = pending.clone();
            let addr = SyncArbiter::start(1, move || Evaluator {
                config: Arc::clone(&config),
                store: None,
                pending: flag.clone(),
                next: feedback.clone(),
                supervisor: me.clone().recipient(),
                busy: busy.clone(),
            });
            Bell::new(addr, pending)
        };
        let trainer = {
            let (config, evaluator, me, busy, stop) = (
                Arc::clone(&config),
                evaluator.clone(),
                me.clone(),
                busy.clone(),
                Arc::clone(stop),
            );
            let pending = Pending::default();
            let flag = pending.clone();
            let addr = SyncArbiter::start(1, move || Trainer {
                config: Arc::clone(&config),
                store: None,
                pending: flag.clone(),
                next: evaluator.clone(),
                supervisor: me.clone().recipient(),
                stop: Arc::clone(&stop),
                busy: busy.clone(),
            });
            Bell::new(addr, pending)
        };
        // Crawl, clean and condense share one thread of their own.
        let data = Arbiter::new().handle();
        let summarizer = {
            let (config, trainer, me, busy, http, store) = (
                Arc::clone(&config),
                trainer.clone(),
                me.clone(),
                busy.clone(),
                http.clone(),
                p.summarizer,
            );
            Summarizer::start_in_arbiter(&data, move |_| Summarizer {
                condenser: Summarizer::condenser(&config, &http),
                config,
                store: Rc::new(store),
                http,
                next: trainer,
                supervisor: me.recipient(),
                busy,
            })
        };
        let preprocessor = {
            let (config, next, me, store) = (
                Arc::clone(&config),
                summarizer.clone(),
                me.clone(),
                p.preprocessor,
            );
            Preprocessor::start_in_arbiter(&data, move |_| Preprocessor {
                config,
                store: Rc::new(store),
                next,
                supervisor: me.recipient(),
            })
        };
        let crawler = {
            let (config, next, me, busy, store) = (
                Arc::clone(&config),
                preprocessor.clone(),
                me.clone(),
                busy.clone(),
                p.crawler,
            );
            Crawler::start_in_arbiter(&data, move |_| Crawler {
                config,
                store: Rc::new(store),
                http,
                next,
                supervisor: me.recipient(),
                busy,
            })
        };
        Stages {
            crawler,
            preprocessor,
            summarizer,
            trainer,
            evaluator,
            feedback,
        }
    }
}
