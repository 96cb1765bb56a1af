//! Publisher: keeps the `[[publish]]` targets in line with the store
//! ([`crate::publish`]) in the background, so that publishing never
//! holds up learning. A run starts on start-up, on a [`Publish`] (Feedback
//! promoted a version), whenever the served version or the promoted set
//! changes in the store (a CLI promote, rollback or merge), and per target
//! every `reconcile_secs` (a server that restarted or was changed by hand
//! converges). A target that fails is degraded — recorded with its error
//! for `status`, the page and `/metrics` — and retried with backoff (5 s,
//! doubling, at most 5 min); the others go on.
//!
//! Local targets (`dir`, `gguf`) run first, on a blocking thread; the
//! remote ones (`vllm`, `hf_hub`) then run concurrently on this arbiter.

use crate::util::retry::Backoff;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::UseConfig;
use crate::config::{Config, PublishConfig};
use crate::publish::{self, Plan, PublishError, TargetState};
use lorastream_store::Store;

/// Publish now (a version was promoted).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Publish;

/// How often the store is checked for a change of what is published.
const TICK: Duration = Duration::from_secs(2);
/// The retry of a failed target: 5 s, doubling up to 5 min.
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));

pub struct Publisher {
    pub config: Arc<Config>,
    pub store: Store,
    clocks: HashMap<String, Clock>,
    running: bool,
    /// A run was asked for while one ran.
    again: bool,
    /// What the last run published: (served, promoted versions).
    seen: Option<Seen>,
}

type Seen = (Option<i64>, Vec<i64>);

/// When a target runs next, and how often it failed in a row.
#[derive(Debug, Clone, Copy)]
struct Clock {
    due: Instant,
    failures: u32,
}

impl Publisher {
    pub fn new(config: Arc<Config>, store: Store) -> Publisher {
        Publisher {
            config,
            store,
            clocks: HashMap::new(),
            running: false,
            again: false,
            seen: None,
        }
    }

    fn all(&self) -> Vec<String> {
        self.config.publish.iter().map(|t| t.name.clone()).collect()
    }

    /// Starts a run of `names` unless one is running (then one more follows).
    fn request(&mut self, ctx: &mut Context<Self>, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        if self.running {
            self.again = true;
            return;
        }
        self.running = true;
        let config = Arc::clone(&self.config);
        let run = run_targets(config, names)
            .into_actor(self)
            .map(|out, act, ctx| {
                act.running = false;
                act.settle(out);
                if std::mem::take(&mut act.again) {
                    let all = act.all();
                    act.request(ctx, all);
                }
            });
        ctx.spawn(run);
    }

    /// Sets each target's next run from its result.
    fn settle(&mut self, out: Outcome) {
        if let Some(seen) = out.seen {
            self.seen = Some(seen);
        }
        let now = Instant::now();
        for (name, ok) in out.results {
            let Some(t) = self.config.publish.iter().find(|t| t.name == name) else {
                continue;
            };
            let clock = self.clocks.entry(name).or_insert(Clock {
                due: now,
                failures: 0,
            });
            if ok {
                clock.failures = 0;
                clock.due = now + Duration::from_secs(t.reconcile_secs);
            } else {
                clock.failures += 1;
                let wait = BACKOFF.delay(clock.failures);
                clock.due = now + wait;
                tracing::warn!(target = %t.name, failures = clock.failures, retry_in_secs = wait.as_secs(), "publish target degraded; retrying");
            }
        }
    }

    /// Every tick: a run of every target when what is published changed,
    /// else of the targets that are due.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.running || self.config.publish.is_empty() {
            return;
        }
        let changed = match (&self.seen, seen(&self.store)) {
            (Some(old), Ok(now)) => *old != now,
            (None, _) | (_, Err(_)) => false,
        };
        let now = Instant::now();
        let names: Vec<String> = if changed {
            self.all()
        } else {
            self.config
                .publish
                .iter()
                .filter(|t| self.clocks.get(&t.name).is_none_or(|c| c.due <= now))
                .map(|t| t.name.clone())
                .collect()
        };
        self.request(ctx, names);
    }
}

/// The served version and the promoted set, as the store has them now.
fn seen(store: &Store) -> Result<Seen, PublishError> {
    let plan = Plan::read(store, None)?;
    Ok((plan.served_id(), plan.wanted.iter().map(|a| a.id).collect()))
}

impl Actor for Publisher {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::MAILBOX);
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
        let all = self.all();
        self.request(ctx, all);
    }
}

impl Handler<Publish> for Publisher {
    type Result = ();
    fn handle(&mut self, _: Publish, ctx: &mut Context<Self>) {
        let all = self.all();
        self.request(ctx, all);
    }
}

impl Handler<UseConfig> for Publisher {
    type Result = ();
    fn handle(&mut self, msg: UseConfig, ctx: &mut Context<Self>) {
        self.config = msg.0;
        self.clocks
            .retain(|name, _| self.config.publish.iter().any(|t| &t.name == name));
        let all = self.all();
        self.request(ctx, all);
    }
}

/// What a run did: what it published (None when the plan could not be
/// read) and whether each target succeeded.
struct Outcome {
    seen: Option<Seen>,
    results: Vec<(String, bool)>,
}

/// Runs `names`: the local targets on a blocking thread, then the remote
/// ones concurrently; every result recorded and logged.
async fn run_targets(config: Arc<Config>, names: Vec<String>) -> Outcome {
    let targets: Vec<PublishConfig> = config
        .publish
        .iter()
        .filter(|t| names.contains(&t.name))
        .cloned()
        .collect();
    let (local, remote): (Vec<_>, Vec<_>) = targets.into_iter().partition(|t| !t.kind.is_remote());
    let cfg = Arc::clone(&config);
    let first = tokio::task::spawn_blocking(move || -> Result<_, PublishError> {
        let store = cfg.open_store()?;
        let plan = Plan::read(&store, None)?;
        let results: Vec<_> = local
            .iter()
            .map(|t| (t.clone(), publish::run_local(&cfg, &store, &plan, t)))
            .collect();
        Ok((plan, results))
    })
    .await;
    let (plan, mut done) = match first {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return failed_all(&config, &names, &e.to_string()).await,
        Err(e) => return failed_all(&config, &names, &format!("publishing panicked: {e}")).await,
    };
    let runs = remote
        .iter()
        .map(|t| publish::run_remote(&config, &plan, t));
    let remote_results = futures_util::future::join_all(runs).await;
    done.extend(remote.into_iter().zip(remote_results));
    let seen = (plan.served_id(), plan.wanted.iter().map(|a| a.id).collect());
    Outcome {
        seen: Some(seen),
        results: record_all(&config, done).await,
    }
}

/// Records and logs each result; (name, ok) per target.
async fn record_all(
    config: &Arc<Config>,
    done: Vec<(PublishConfig, Result<TargetState, PublishError>)>,
) -> Vec<(String, bool)> {
    let cfg = Arc::clone(config);
    let recorded = tokio::task::spawn_blocking(move || {
        let store = cfg.open_store();
        done.iter()
            .map(|(t, r)| {
                log(t, r);
                if let Ok(store) = &store {
                    publish::record(store, t, r);
                }
                (t.name.clone(), r.is_ok())
            })
            .collect()
    })
    .await;
    recorded.unwrap_or_default()
}

fn log(t: &PublishConfig, r: &Result<TargetState, PublishError>) {
    match r {
        Ok(s) if !s.written.is_empty() || !s.removed.is_empty() => {
            tracing::info!(target = %t.name, kind = %t.kind, published = ?s.written, removed = ?s.removed, current = ?s.current, "publish target updated")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(target = %t.name, kind = %t.kind, error = %e, "publishing failed"),
    }
}

/// Every target of `names` failed with `error` (the plan could not be read).
async fn failed_all(config: &Arc<Config>, names: &[String], error: &str) -> Outcome {
    let done = config
        .publish
        .iter()
        .filter(|t| names.contains(&t.name))
        .map(|t| (t.clone(), Err(PublishError::Aborted(error.to_string()))))
        .collect();
    Outcome {
        seen: None,
        results: record_all(config, done).await,
    }
}
