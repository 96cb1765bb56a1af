//! `lorastream run`: opens the store, registers the configured sources, starts
//! the actor pipeline (DESIGN.md §1, [`crate::run::actors`]) and runs until told to
//! stop.
//!
//! Like mini-redis, the daemon takes its control signals as a stream parameter,
//! so tests drive it without sending real signals; [`signals`] maps SIGINT,
//! SIGTERM and SIGHUP onto it.

use std::path::PathBuf;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::run::actors::supervisor::{Reload, Shutdown, Supervisor};
use crate::util::notify::Notifier;
use lorastream_store::{Store, StoreError};

/// What the outside world asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGHUP: re-read the config; an invalid file keeps the old one running.
    Reload,
    /// SIGINT / SIGTERM.
    Shutdown(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create state directory {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Lock(#[from] crate::util::lock::LockError),
}

/// The device and dtype training will use, as `[model]` resolves here.
fn log_device(config: &Config) {
    match lorastream_ml::runtime::device::select(&config.model.device, config.model.dtype) {
        Ok((device, kind)) => tracing::info!(
            requested = %config.model.device,
            device = ?device,
            dtype = ?kind,
            why = %config.model.dtype.reason(device),
            cuda_devices = tch::Cuda::device_count(),
            "compute device"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "compute device unavailable; training fails until it is")
        }
    }
}

/// Runs the daemon until a shutdown arrives on `control` (or the sender is
/// dropped): the store, the actor pipeline under its supervisor, the
/// schedules; SIGHUP reloads the config. Must run inside an actix `System`.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), DaemonError> {
    let state_dir = config.state_dir();
    std::fs::create_dir_all(&state_dir).map_err(|source| DaemonError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let _lock = crate::util::lock::acquire(&state_dir, "lorastream run")?;
    let store = config.open_store()?;
    register_sources(&store, &config)?;
    tracing::info!(
        config = %config_path.display(),
        state_dir = %state_dir.display(),
        db = %store.path().display(),
        schema = store.schema_version()?,
        summary = %config.summary(),
        "lorastream started"
    );
    log_device(&config);
    let grace = config.daemon.shutdown_deadline();
    let config = Arc::new(config);
    let server = start_server(&config);
    let supervisor = Supervisor::start(config, Notifier::from_env())?;

    let reason = loop {
        match control.recv().await {
            Some(Control::Reload) => match Config::load(&config_path) {
                Ok(new) => {
                    register_sources(&store, &new)?;
                    tracing::info!(config = %config_path.display(), summary = %new.summary(), "config reloaded");
                    if let Some((_, chat)) = &server {
                        chat.reload_keys(&new.server);
                    }
                    let _ = supervisor.send(Reload(Arc::new(new))).await;
                }
                Err(e) => {
                    tracing::error!(config = %config_path.display(), error = %e, "config reload failed; keeping the running config");
                }
            },
            Some(Control::Shutdown(signal)) => break signal,
            None => break "control channel closed",
        }
    };
    tracing::info!(reason, "shutting down");
    if let Some((server, _)) = server {
        // Requests in flight finish (up to the server's shutdown timeout).
        server.stop(true).await;
    }
    if tokio::time::timeout(grace, supervisor.send(Shutdown))
        .await
        .is_err()
    {
        tracing::warn!("the supervisor did not finish in time");
    }
    store.checkpoint()?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Starts the chat server when `[server] enabled`; a failure (address in use,
/// unreadable API key) is logged and the daemon goes on learning without it.
fn start_server(
    config: &Arc<Config>,
) -> Option<(actix_web::dev::ServerHandle, Arc<crate::serve::State>)> {
    if !config.server.enabled {
        return None;
    }
    match crate::serve::start(Arc::clone(config)) {
        Ok((server, state)) => {
            let handle = server.handle();
            actix::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "chat server stopped");
                }
            });
            Some((handle, state))
        }
        Err(e) => {
            tracing::error!(error = %e, "chat server not started; the daemon goes on without it");
            None
        }
    }
}

fn register_sources(store: &Store, config: &Config) -> Result<(), StoreError> {
    for s in &config.sources {
        store.ensure_source(&s.name, s.kind)?;
    }
    Ok(())
}

/// Forwards SIGHUP as [`Control::Reload`] and SIGINT/SIGTERM as
/// [`Control::Shutdown`] to the returned receiver. Must be called inside a tokio
/// runtime; the forwarding task ends after the first shutdown signal.
pub fn signals() -> Result<mpsc::Receiver<Control>, DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = term.recv() => Control::Shutdown("SIGTERM"),
                _ = int.recv() => Control::Shutdown("SIGINT"),
                _ = hup.recv() => Control::Reload,
            };
            let stop = matches!(msg, Control::Shutdown(_));
            if tx.send(msg).await.is_err() || stop {
                break;
            }
        }
    });
    Ok(rx)
}
