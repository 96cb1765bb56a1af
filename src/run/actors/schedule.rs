//! The supervisor's cron schedules (tokio-cron-scheduler): which jobs a config
//! asks for, and a scheduler that sends [`CronFired`] to the supervisor.

use actix::prelude::*;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::config::{Config, ON_NEW_STREAM};

/// What a cron entry triggers; also the job a stage marks busy while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scheduled {
    Crawl(String),
    Seal,
    Train,
    Eval,
}

impl std::fmt::Display for Scheduled {
    /// As the logs name the job: `crawl:<source>`, `seal`, `train`, `eval`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scheduled::Crawl(s) => write!(f, "crawl:{s}"),
            Scheduled::Seal => f.write_str("seal"),
            Scheduled::Train => f.write_str("train"),
            Scheduled::Eval => f.write_str("eval"),
        }
    }
}

#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct CronFired(pub Scheduled);

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule {expr:?}: {source}")]
    Job {
        expr: String,
        source: JobSchedulerError,
    },
    #[error("scheduler: {0}")]
    Scheduler(#[from] JobSchedulerError),
}

/// The cron entries of `c`.
pub fn jobs(c: &Config) -> Vec<(String, Scheduled)> {
    let mut jobs = Vec::new();
    for s in c.sources.iter().filter(|s| s.enabled) {
        if let Some(expr) = s.schedule.clone().or_else(|| c.schedule.crawl.clone()) {
            jobs.push((expr, Scheduled::Crawl(s.name.clone())));
        }
    }
    if let Some(e) = &c.schedule.seal {
        jobs.push((e.clone(), Scheduled::Seal));
    }
    if c.schedule.train != ON_NEW_STREAM {
        jobs.push((c.schedule.train.clone(), Scheduled::Train));
    }
    if let Some(e) = &c.schedule.eval {
        jobs.push((e.clone(), Scheduled::Eval));
    }
    jobs
}

/// Shuts `old` down and starts a scheduler firing `jobs` at `me`.
pub async fn start(
    old: Option<JobScheduler>,
    jobs: Vec<(String, Scheduled)>,
    me: Recipient<CronFired>,
) -> Result<JobScheduler, ScheduleError> {
    if let Some(mut old) = old {
        let _ = old.shutdown().await;
    }
    let sched = JobScheduler::new().await?;
    for (expr, job) in &jobs {
        let (me, job2) = (me.clone(), job.clone());
        let j = Job::new_async(expr.as_str(), move |_, _| {
            let (me, job) = (me.clone(), job2.clone());
            Box::pin(async move {
                let _ = me.try_send(CronFired(job));
            })
        })
        .map_err(|source| ScheduleError::Job {
            expr: expr.clone(),
            source,
        })?;
        sched.add(j).await?;
        tracing::info!(job = %job, cron = %expr, "scheduled");
    }
    sched.start().await?;
    Ok(sched)
}
