//! The daemon's actors (DESIGN.md §1): one per stage, one file each.
//!
//! ```text
//! cron ──Crawl──▶ Crawler ──RawBatch──▶ Preprocessor ──Examples──▶ Summarizer
//!                                                                    │ StreamSealed
//!        Supervisor ◀──Decided── Feedback ◀──EvalReport── Evaluator ◀──Candidate── Trainer
//!                                  │ Publish
//!                                  ▼
//!                              Publisher ──▶ [[publish]] targets (dir, gguf, vLLM fleet, Hub)
//! ```
//!
//! Crawler, Preprocessor and Summarizer share one arbiter thread (async I/O and
//! short SQLite work); Trainer and Evaluator each run on a `SyncArbiter`
//! thread, because tensor work must not block an async executor; Feedback, the
//! Publisher and the Supervisor run on the system arbiter, which also answers signals and
//! pings the watchdog. Each actor opens its own store connection (WAL).
//!
//! The async stages hand work on with `send().await` into bounded mailboxes,
//! so a slow stage slows the one before it. The sync stages (Trainer,
//! Evaluator) are different: a `SyncArbiter`'s mailbox is unbounded in actix
//! 0.13, so they are only ever notified through a [`Bell`], which coalesces —
//! while a notification is pending, ringing again sends nothing — so each of
//! their mailboxes holds at most one notification, whatever the senders do.
//! Nothing is lost by coalescing: the stage takes its work from the store.
//!
//! Every stage reads its input from the store, whatever the message says, so a
//! `Kick` (on start, after a crash, after a backoff) resumes anything that was
//! in flight, and repeating a message is harmless.

pub mod crawler;
pub mod evaluator;
pub mod feedback;
pub mod messages;
pub mod preprocessor;
pub mod publisher;
pub mod schedule;
mod stages;
pub mod summarizer;
pub mod supervisor;
pub mod trainer;

pub use lorastream_store::Stage;
use schedule::Scheduled;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix::Message;

use crate::config::Config;
use lorastream_store::{StageState, Store, StoreError};

/// Why a stage's unit of work failed; the supervisor records it for `status`
/// and retries the stage after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pipeline(#[from] crate::learn::pipeline::PipelineError),
    #[error(transparent)]
    Matrix(#[from] crate::learn::matrix::fill::MatrixError),
    #[error(transparent)]
    Streams(#[from] crate::data::streams::StreamError),
    #[error(transparent)]
    Policy(#[from] crate::learn::policy::PolicyError),
    #[error("{what} panicked: {message}")]
    Panicked { what: &'static str, message: String },
}

/// Do whatever the store says is waiting for this stage.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Kick;

/// A new configuration (after SIGHUP).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct UseConfig(pub Arc<Config>);

/// Answered once the stage has finished what it was doing (used on shutdown).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Ping;

/// The address of a sync stage behind a doorbell: [`Bell::ring`] sends a
/// notification unless one is pending; the stage calls [`Pending::answer`] (on
/// its clone of the flag) as it takes one, before doing the work, so a ring
/// during the work makes it look again once.
pub struct Bell<A: actix::Actor> {
    addr: actix::Addr<A>,
    pending: Pending,
}

impl<A: actix::Actor> Clone for Bell<A> {
    fn clone(&self) -> Self {
        Bell {
            addr: self.addr.clone(),
            pending: self.pending.clone(),
        }
    }
}

/// The flag a [`Bell`] and its stage share.
#[derive(Debug, Clone, Default)]
pub struct Pending(Arc<AtomicBool>);

impl Pending {
    /// The stage took the notification.
    pub fn answer(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl<A> Bell<A>
where
    A: actix::Actor<Context = actix::SyncContext<A>>,
{
    /// Starts the stage on a `SyncArbiter` thread of its own behind a bell;
    /// `make` builds it with its clone of the flag.
    pub fn start(make: impl Fn(Pending) -> A + Send + Sync + 'static) -> Self {
        let pending = Pending::default();
        let flag = pending.clone();
        let addr = actix::SyncArbiter::start(1, move || make(flag.clone()));
        Bell { addr, pending }
    }

    /// Notifies the stage unless a notification is pending. True when sent.
    pub fn ring<M>(&self, msg: M) -> bool
    where
        A: actix::Handler<M>,
        M: Message<Result = ()> + Send + 'static,
    {
        if self.pending.0.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.addr.do_send(msg);
        true
    }

    /// The address, for the messages that are not work (config, shutdown ping).
    pub fn addr(&self) -> &actix::Addr<A> {
        &self.addr
    }
}

/// Mailbox size of every stage: a full mailbox makes `send().await` wait, so a
/// slow stage slows the one before it instead of growing memory.
pub const MAILBOX: usize = 16;

/// Jobs running now (`crawl:<source>`, `seal`, `train`, `eval`): a scheduled
/// run of a job that is still running is skipped, not queued.
#[derive(Debug, Clone, Default)]
pub struct Busy(Arc<Mutex<HashSet<Scheduled>>>);

impl Busy {
    pub fn is_busy(&self, job: &Scheduled) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(job)
    }
    /// Marks `job` running until the guard drops; `None` if it already is.
    pub fn begin(&self, job: Scheduled) -> Option<BusyGuard> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(job.clone()).then(|| BusyGuard {
            busy: self.clone(),
            job,
        })
    }
}

pub struct BusyGuard {
    busy: Busy,
    job: Scheduled,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.busy
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.job);
    }
}

/// The store connection of a sync stage, opened on its thread at first use.
pub(crate) fn lazy_store<'a>(
    slot: &'a mut Option<Store>,
    config: &Config,
) -> Result<&'a Store, StoreError> {
    let store = match slot.take() {
        Some(store) => store,
        None => config.open_store()?,
    };
    Ok(slot.insert(store))
}

/// Records a stage's state for `status`; a failure to record is only logged.
pub(crate) fn mark(store: &Store, stage: Stage, state: StageState, detail: Option<&str>) {
    if let Err(e) = store.set_stage(stage, state, detail) {
        tracing::warn!(stage = %stage, error = %e, "cannot record the stage state");
    }
}

/// Drives a future to completion on the current thread: how the sync stages
/// (Trainer, Evaluator) `send().await` to the next stage.
pub fn block_on<F: Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Runs tensor work, turning a panic into an error so the stage can be retried.
pub(crate) fn catch<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, StageError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Ok(v),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(StageError::Panicked {
                what,
                message: msg.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_jobs_are_exclusive() {
        let b = Busy::default();
        let g = b.begin(Scheduled::Train).unwrap();
        assert!(b.is_busy(&Scheduled::Train));
        assert!(b.begin(Scheduled::Train).is_none());
        assert!(b.begin(Scheduled::Crawl("x".into())).is_some());
        drop(g);
        assert!(!b.is_busy(&Scheduled::Train));
    }

    /// A stage that takes 100 ms per notification.
    struct Slow(Pending, Arc<std::sync::atomic::AtomicUsize>);
    impl actix::Actor for Slow {
        type Context = actix::SyncContext<Self>;
    }
    impl actix::Handler<Kick> for Slow {
        type Result = ();
        fn handle(&mut self, _: Kick, _: &mut actix::SyncContext<Self>) {
            self.0.answer();
            self.1.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Before: every notification to a sync stage queued in its unbounded
    /// mailbox. Now 10,000 rings while it works are one more run, not 10,000.
    #[test]
    fn a_bell_coalesces_notifications() {
        let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = Arc::clone(&handled);
        let sent = actix::System::new().block_on(async move {
            let bell = Bell::start(move |p| Slow(p, Arc::clone(&h)));
            let sent = (0..10_000).filter(|_| bell.ring(Kick)).count();
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            sent
        });
        assert!(sent <= 2, "{sent} notifications queued");
        assert!((1..=2).contains(&handled.load(Ordering::SeqCst)));
    }

    #[test]
    fn block_on_and_catch() {
        assert_eq!(block_on(async { 7 }), 7);
        let r: Result<(), StageError> = catch("work", || panic!("boom"));
        assert_eq!(r.unwrap_err().to_string(), "work panicked: boom");
        assert_eq!(catch("work", || 3).ok(), Some(3));
    }
}
