//! Supervisor: starts the stages, resumes what the store says was in flight,
//! runs the cron schedules, retries failed stages with capped exponential
//! backoff, keeps systemd informed (READY, STATUS, WATCHDOG, RELOADING,
//! STOPPING), reloads the config and shuts down in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use tokio_cron_scheduler::JobScheduler;

use super::crawler::Crawl;
use super::messages::{Decided, StageDone};
use super::schedule::{self, CronFired, Scheduled};
use super::stages::{PendingStores, Reports, Stages};
use super::summarizer::Seal;
use super::{Busy, Kick, Ping, Stage, UseConfig};
use crate::config::{Config, ON_NEW_STREAM};
use crate::util::notify::Notifier;
use crate::util::retry::Backoff;
use lorastream_store::{AdapterState, StageState, Store, StoreError};

/// Backoff before a failed stage is retried: 1 s, 2 s, 4 s … capped at 5 min.
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));

pub fn backoff(consecutive_failures: u32) -> Duration {
    BACKOFF.delay(consecutive_failures)
}

#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Reload(pub Arc<Config>);

/// Stop schedules, let the current training step finish and checkpoint, and
/// answer once the stages are still (or `grace` has passed).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

pub struct Supervisor {
    config: Arc<Config>,
    store: Store,
    notifier: Notifier,
    busy: Busy,
    stop: Arc<AtomicBool>,
    stages: Option<Stages>,
    scheduler: Option<JobScheduler>,
    consecutive: HashMap<Stage, u32>,
    stopping: bool,
    /// A stage made no progress within `stall_secs` (the watchdog is silent).
    stalled: bool,
    /// Free space is below `[retention] min_free_bytes` (warned once).
    low_space: bool,
    last_status: String,
}

impl Supervisor {
    /// Opens the store connections and starts the supervisor, which starts
    /// the stages.
    pub fn start(config: Arc<Config>, notifier: Notifier) -> Result<Addr<Supervisor>, StoreError> {
        let store = config.open_store()?;
        let pending = PendingStores {
            crawler: config.open_store()?,
            preprocessor: config.open_store()?,
            summarizer: config.open_store()?,
            feedback: config.open_store()?,
            publisher: config.open_store()?,
        };
        for s in Stage::ALL {
            store.set_stage(*s, StageState::Idle, None)?;
        }
        let supervisor = Supervisor {
            config,
            store,
            notifier,
            busy: Busy::default(),
            stop: Arc::new(AtomicBool::new(false)),
            stages: None,
            scheduler: None,
            consecutive: HashMap::new(),
            stopping: false,
            stalled: false,
            low_space: false,
            last_status: String::new(),
        };
        Ok(Supervisor::create(move |ctx| {
            let mut supervisor = supervisor;
            let reports = Reports {
                done: ctx.address().recipient(),
                decided: ctx.address().recipient(),
            };
            supervisor.stages = Some(Stages::spawn(
                reports,
                &supervisor.config,
                &supervisor.busy,
                &supervisor.stop,
                pending,
            ));
            supervisor
        }))
    }

    /// Resumes what the store says was in flight.
    fn resume(&mut self) {
        let Some(st) = &self.stages else { return };
        let candidates = match self.store.adapters() {
            Ok(a) => a
                .iter()
                .filter(|a| a.state == AdapterState::Candidate)
                .count(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the store to resume");
                return;
            }
        };
        tracing::info!(candidates, "resuming from the store");
        // Raw items → examples → streams: the preprocessor always hands on to
        // the summarizer, which condenses and seals what is left from before.
        st.preprocessor.do_send(Kick);
        if self.config.schedule.crawl_on_start {
            st.crawler.do_send(Crawl { source: None });
        }
        if candidates > 0 {
            st.evaluator.ring(Kick);
        } else if self.config.schedule.train == ON_NEW_STREAM {
            // A stream sealed (or half trained) before the crash.
            st.trainer.ring(Kick);
        }
    }

    fn kick(&self, stage: Stage) {
        let Some(st) = &self.stages else { return };
        match stage {
            Stage::Crawler => {} // sources run again at their next schedule
            Stage::Preprocessor => st.preprocessor.do_send(Kick),
            Stage::Summarizer => st.summarizer.do_send(Kick),
            Stage::Trainer => {
                st.trainer.ring(Kick);
            }
            Stage::Evaluator | Stage::Feedback => {
                st.evaluator.ring(Kick);
            }
        }
    }

    /// Replaces the scheduler with one for the current config.
    fn reschedule(&mut self, ctx: &mut Context<Self>) {
        let old = self.scheduler.take();
        let fut = schedule::start(old, schedule::jobs(&self.config), ctx.address().recipient());
        ctx.wait(fut.into_actor(self).map(|res, act, _| match res {
            Ok(s) => act.scheduler = Some(s),
            Err(e) => tracing::error!(error = %e, "cannot start the schedules"),
        }));
    }

    /// WATCHDOG=1 while the store answers and every running stage recorded
    /// progress within `stall_secs`; a stuck stage (a hung call, a step that
    /// never ends) stops the pings, and systemd restarts the daemon.
    fn watchdog(&mut self) {
        if self.stopping {
            return;
        }
        let rows = match self.store.stages() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "store unreadable; watchdog pings stop");
                return;
            }
        };
        let stall_ms = self.config.daemon.stall_secs.saturating_mul(1000) as i64;
        let now = lorastream_store::now_ms();
        match rows
            .iter()
            .find(|r| r.state == StageState::Running && now - r.updated_at > stall_ms)
        {
            None => {
                self.stalled = false;
                self.notifier.watchdog();
            }
            Some(r) if !self.stalled => {
                self.stalled = true;
                tracing::error!(stage = %r.name, doing = r.detail.as_deref().unwrap_or(""), since_s = (now - r.updated_at) / 1000, stall_secs = self.config.daemon.stall_secs, "stage made no progress; watchdog pings stop so systemd restarts the daemon");
            }
            Some(_) => {}
        }
    }

    /// Warns once when free space falls below `[retention] min_free_bytes`, and
    /// once when it is back. (A full disk fails the current step, which is
    /// retried after a backoff and resumes once there is space.)
    fn check_free_space(&mut self) {
        let dir = self.config.state_dir();
        let Some((free, _)) = crate::util::disk::free_space(&dir) else {
            return;
        };
        let min = self.config.retention.min_free_bytes;
        let low = free < min;
        if low && !self.low_space {
            tracing::warn!(free_bytes = free, min_free_bytes = min, state_dir = %dir.display(), "low disk space on the state dir");
        } else if !low && self.low_space {
            tracing::info!(free_bytes = free, "disk space back above min_free_bytes");
        }
        self.low_space = low;
    }

    fn retention(&self) {
        if let Err(e) = crate::run::retention::sweep(&self.config, &self.store) {
            tracing::warn!(error = %e, "retention sweep failed; retried in an hour");
        }
    }

    /// STATUS= for systemd: what the stages are doing.
    fn status_line(&self) -> String {
        match self.store.stages() {
            Ok(rows) => lorastream_store::StageRow::running(&rows)
                .unwrap_or_else(|| "idle, waiting for the schedule".into()),
            Err(e) => format!("store unreadable: {e}"),
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        self.reschedule(ctx);
        self.resume();
        let n = self.config.sources.iter().filter(|s| s.enabled).count();
        self.notifier.ready(&format!(
            "running: {n} source(s), {} schedule(s)",
            schedule::jobs(&self.config).len()
        ));
        // STATUS= every 2 s when it changed; WATCHDOG=1 while the store answers.
        ctx.run_interval(Duration::from_secs(2), |act, _| {
            let line = act.status_line();
            if line != act.last_status {
                act.notifier.status(&line);
                act.last_status = line;
            }
        });
        // Retention hourly (and after each decision); free space every minute.
        ctx.run_interval(Duration::from_secs(3600), |act, _| act.retention());
        self.check_free_space();
        ctx.run_interval(Duration::from_secs(60), |act, _| act.check_free_space());
        if let Some(every) = crate::util::notify::watchdog_interval() {
            tracing::info!(
                interval_ms = every.as_millis() as u64,
                stall_secs = self.config.daemon.stall_secs,
                "watchdog enabled"
            );
            ctx.run_interval(every, |act, _| act.watchdog());
        }
    }
}

impl Handler<CronFired> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: CronFired, _: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let key = msg.0.clone();
        if self.busy.is_busy(&key) {
            tracing::info!(job = %key, "scheduled run skipped: the previous one is still running");
            return;
        }
        let Some(st) = &self.stages else { return };
        let sent = match msg.0 {
            Scheduled::Crawl(source) => st
                .crawler
                .try_send(Crawl {
                    source: Some(source),
                })
                .is_ok(),
            Scheduled::Seal => st.summarizer.try_send(Seal).is_ok(),
            Scheduled::Train => st.trainer.ring(Kick),
            Scheduled::Eval => st.evaluator.ring(Kick),
        };
        if !sent {
            tracing::info!(job = %key, "scheduled run skipped: the stage's mailbox is full, or a notification is pending");
        }
    }
}

impl Handler<StageDone> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: StageDone, ctx: &mut Context<Self>) {
        // An evaluation pass may have failed a candidate it could not measure:
        // the trainer (which waits while a candidate is undecided) looks again.
        if msg.stage == Stage::Evaluator
            && !self.stopping
            && self.config.schedule.train == ON_NEW_STREAM
        {
            self.kick(Stage::Trainer);
        }
        match msg.result {
            Ok(()) => {
                self.consecutive.insert(msg.stage, 0);
            }
            Err(e) => {
                let n = self.consecutive.entry(msg.stage).or_default();
                *n += 1;
                let wait = backoff(*n);
                if let Err(se) = self.store.stage_failed(msg.stage, &e.to_string()) {
                    tracing::warn!(error = %se, "cannot record the failure");
                }
                tracing::error!(stage = %msg.stage, error = %e, consecutive = *n, retry_in_ms = wait.as_millis() as u64, "stage failed; restarting it after a backoff");
                let stage = msg.stage;
                ctx.run_later(wait, move |act, _| {
                    if !act.stopping {
                        let _ = act.store.set_stage(stage, StageState::Idle, None);
                        act.kick(stage);
                    }
                });
            }
        }
    }
}

impl Handler<Decided> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Decided, _: &mut Context<Self>) {
        tracing::debug!(
            adapter = msg.adapter_id,
            promoted = msg.promoted,
            "decision made"
        );
        if !self.stopping && self.config.schedule.train == ON_NEW_STREAM {
            self.kick(Stage::Trainer);
        }
        self.retention();
    }
}

impl Handler<Reload> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Reload, ctx: &mut Context<Self>) {
        self.notifier.reloading();
        let added: Vec<String> = msg
            .0
            .sources
            .iter()
            .filter(|s| {
                s.enabled
                    && !self
                        .config
                        .sources
                        .iter()
                        .any(|o| o.name == s.name && o.enabled)
            })
            .map(|s| s.name.clone())
            .collect();
        // (daemon::run has registered the new sources in the store.)
        self.config = msg.0;
        if let Some(st) = &self.stages {
            let m = UseConfig(Arc::clone(&self.config));
            st.crawler.do_send(m.clone());
            st.preprocessor.do_send(m.clone());
            st.summarizer.do_send(m.clone());
            st.trainer.addr().do_send(m.clone());
            st.evaluator.addr().do_send(m.clone());
            st.publisher.do_send(m.clone());
            // The policy's [feedback] keys change on reload too.
            st.feedback.do_send(m);
        }
        self.reschedule(ctx);
        if self.config.schedule.crawl_on_start
            && let Some(st) = &self.stages
        {
            for name in added {
                let _ = st.crawler.try_send(Crawl { source: Some(name) });
            }
        }
        self.notifier.ready("running (configuration reloaded)");
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        self.stop.store(true, Ordering::SeqCst);
        self.notifier.stopping();
        let grace = Duration::from_secs(self.config.daemon.shutdown_grace_secs);
        let sched = self.scheduler.take();
        let (trainer, evaluator) = match &self.stages {
            Some(s) => (
                Some(s.trainer.addr().clone()),
                Some(s.evaluator.addr().clone()),
            ),
            None => (None, None),
        };
        Box::pin(
            async move {
                if let Some(mut s) = sched {
                    let _ = s.shutdown().await;
                }
                // The sync stages answer a Ping once their current work is done:
                // training finishes its step and writes a checkpoint first.
                let wait = async {
                    if let Some(t) = trainer {
                        let _ = t.send(Ping).await;
                    }
                    if let Some(e) = evaluator {
                        let _ = e.send(Ping).await;
                    }
                };
                if tokio::time::timeout(grace, wait).await.is_err() {
                    tracing::warn!(grace_s = grace.as_secs(), "stages still busy after the grace period; stopping anyway (the last checkpoint stays)");
                }
            }
            .into_actor(self)
            .map(|_, act, _| {
                for s in Stage::ALL {
                    let _ = act.store.set_stage(*s, StageState::Stopped, None);
                }
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(12), BACKOFF.max);
        assert_eq!(backoff(100), BACKOFF.max);
    }
}
