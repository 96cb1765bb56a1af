//! The stages the supervisor starts, the thread each runs on, and how they
//! are wired to one another (DESIGN.md §1).

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix::prelude::*;

use super::crawler::Crawler;
use super::evaluator::Evaluator;
use super::feedback::Feedback;
use super::messages::{Decided, StageDone};
use super::preprocessor::Preprocessor;
use super::publisher::Publisher;
use super::summarizer::Summarizer;
use super::trainer::Trainer;
use super::{Bell, Busy};
use crate::config::Config;
use crate::util::http::Http;
use lorastream_store::Store;

pub(super) struct Stages {
    pub(super) crawler: Addr<Crawler>,
    pub(super) preprocessor: Addr<Preprocessor>,
    pub(super) summarizer: Addr<Summarizer>,
    pub(super) trainer: Bell<Trainer>,
    pub(super) evaluator: Bell<Evaluator>,
    pub(super) feedback: Addr<Feedback>,
    pub(super) publisher: Addr<Publisher>,
}

/// Store connections of the async stages, opened by `start` (so a failure is
/// its error, not a panic inside an arbiter).
pub(super) struct PendingStores {
    pub(super) crawler: Store,
    pub(super) preprocessor: Store,
    pub(super) summarizer: Store,
    pub(super) feedback: Store,
    pub(super) publisher: Store,
}

/// Where the stages report to: the supervisor, as plain recipients.
#[derive(Clone)]
pub(super) struct Reports {
    pub(super) done: Recipient<StageDone>,
    pub(super) decided: Recipient<Decided>,
}

/// What every stage shares.
struct Shared<'a> {
    config: &'a Arc<Config>,
    busy: &'a Busy,
    reports: &'a Reports,
}

impl Stages {
    /// Starts every stage: Feedback and the Publisher on the system arbiter, Trainer and
    /// Evaluator on a `SyncArbiter` thread each (behind a [`Bell`]), Crawler,
    /// Preprocessor and Summarizer on one arbiter thread of their own.
    pub(super) fn spawn(
        reports: Reports,
        config: &Arc<Config>,
        busy: &Busy,
        stop: &Arc<AtomicBool>,
        p: PendingStores,
    ) -> Stages {
        let shared = Shared {
            config,
            busy,
            reports: &reports,
        };
        let publisher = Publisher::new(Arc::clone(config), p.publisher).start();
        let feedback = Feedback {
            config: Arc::clone(config),
            store: p.feedback,
            supervisor: reports.decided.clone(),
            done: reports.done.clone(),
            publisher: publisher.clone().recipient(),
        }
        .start();
        let evaluator = spawn_evaluator(&shared, feedback.clone());
        let trainer = spawn_trainer(&shared, evaluator.clone(), stop);
        // Crawl, clean and condense share one thread of their own.
        let data = Arbiter::new().handle();
        let http = Http::new();
        let summarizer = spawn_summarizer(&shared, &data, trainer.clone(), &http, p.summarizer);
        let preprocessor = {
            let (config, next, done) =
                (Arc::clone(config), summarizer.clone(), reports.done.clone());
            let store = p.preprocessor;
            Preprocessor::start_in_arbiter(&data, move |_| Preprocessor {
                config,
                store: Rc::new(store),
                next,
                supervisor: done,
            })
        };
        let crawler = {
            let (config, next, busy) = (Arc::clone(config), preprocessor.clone(), busy.clone());
            let (done, store) = (reports.done.clone(), p.crawler);
            Crawler::start_in_arbiter(&data, move |_| Crawler {
                config,
                store: Rc::new(store),
                http,
                next,
                supervisor: done,
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
            publisher,
        }
    }
}

fn spawn_evaluator(s: &Shared<'_>, feedback: Addr<Feedback>) -> Bell<Evaluator> {
    let (config, busy, done) = (Arc::clone(s.config), s.busy.clone(), s.reports.done.clone());
    Bell::start(move |pending| Evaluator {
        config: Arc::clone(&config),
        store: None,
        pending,
        next: feedback.clone(),
        supervisor: done.clone(),
        busy: busy.clone(),
    })
}

fn spawn_trainer(
    s: &Shared<'_>,
    evaluator: Bell<Evaluator>,
    stop: &Arc<AtomicBool>,
) -> Bell<Trainer> {
    let (config, busy, done) = (Arc::clone(s.config), s.busy.clone(), s.reports.done.clone());
    let stop = Arc::clone(stop);
    Bell::start(move |pending| Trainer {
        config: Arc::clone(&config),
        store: None,
        pending,
        next: evaluator.clone(),
        supervisor: done.clone(),
        stop: Arc::clone(&stop),
        busy: busy.clone(),
    })
}

fn spawn_summarizer(
    s: &Shared<'_>,
    data: &ArbiterHandle,
    next: Bell<Trainer>,
    http: &Http,
    store: Store,
) -> Addr<Summarizer> {
    let (config, busy, done) = (Arc::clone(s.config), s.busy.clone(), s.reports.done.clone());
    let http = http.clone();
    Summarizer::start_in_arbiter(data, move |_| Summarizer {
        condenser: Summarizer::condenser(&config, &http),
        config,
        store: Rc::new(store),
        http,
        next,
        supervisor: done,
        busy,
    })
}
