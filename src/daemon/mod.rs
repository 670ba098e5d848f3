//! `vault serve`: the daemon that hands out access tokens over a Unix socket.

pub(crate) mod alert;
pub(crate) mod audit;
mod deadline_watch;
mod events;
mod flight;
mod http;
mod metrics;
mod notify;
mod outbox;
mod refresher;
mod reloader;
mod rotator;
mod socket;
mod table;
mod tokens;
mod validator;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::config::Config;
use crate::store::AnyStore;
use alert::Alerts;
use audit::Audit;
use tokens::{RefreshSettings, Tokens};

pub use socket::default_socket_path;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("another vault daemon is already serving {0}; stop it first (or use --socket)")]
    AlreadyRunning(PathBuf),
    #[error(
        "refusing the socket directory: {0}. Remove it (another user may have planted it) or give --socket a path in a directory of your own"
    )]
    UnsafeDirectory(crate::files::DirProblem),
    #[error(
        "--socket-group: the existing directory {0} is not open to that group, and vault serve changes only a directory it creates. Remove it, or give it that group and mode 0750 yourself"
    )]
    GroupCannotReach(PathBuf),
    #[error("cannot set up the socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--socket-group: {0}")]
    UnknownGroup(String),
    #[error("{0}")]
    Metadata(String),
    #[error("{0}. Fix the file and start again")]
    Config(crate::config::ConfigError),
    #[error("alert.webhook_secret_file: {0}")]
    Alert(String),
    #[error(transparent)]
    Vault(Box<crate::error::Error>),
}

impl From<crate::error::Error> for ServerError {
    fn from(error: crate::error::Error) -> ServerError {
        ServerError::Vault(Box::new(error))
    }
}

pub struct ServeOptions {
    pub socket: PathBuf,
    /// Widen the socket (0660) and its directory (0750) to this group.
    pub socket_group: Option<String>,
    /// Also answer as a Compute Engine metadata server for one account, on loopback TCP.
    pub metadata: Option<(std::net::SocketAddr, String)>,
    /// Also serve `/metrics` for Prometheus on this loopback TCP address.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Serves until `shutdown` completes, then answers what is in flight and removes the socket.
/// `ready` is told the socket and the number of accounts once the socket accepts.
pub async fn serve(
    mut store: AnyStore,
    options: ServeOptions,
    ready: impl FnOnce(&Path, usize),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let owner_uid = rustix::process::geteuid().as_raw();
    crate::process::raise_open_file_limit();
    let audit = Audit::start(store.dir()).map_err(|source| ServerError::Socket {
        path: store.dir().join("audit.log"),
        source,
    })?;
    let config = Config::load(store.dir()).map_err(ServerError::Config)?;
    let expiring_before = deadline_watch::Warnings {
        refresh_token: config.alert.expiring_before_seconds,
        client_secret: config.alert.client_secret_expiring_before_seconds,
    };
    let degraded_after = config.alert.degraded_after_seconds;
    let metrics = Arc::new(metrics::Metrics::default());
    let alerts = Alerts::start(
        config.alert,
        crate::oauth::token::http_client(),
        metrics.clone(),
    )
    .map_err(ServerError::Alert)?;
    let settings = RefreshSettings {
        refresh_before: config.refresh.before_seconds,
        max_backoff: config.refresh.max_backoff_seconds,
    };
    let fleet = store.fleet().map(|fleet| fleet.host().to_owned());
    if let AnyStore::Fleet(fleet) = &mut store {
        fleet.listen();
        fleet.leave_lease_waits_to_caller();
    }
    let tokens = Arc::new(Tokens::load(
        store, audit, alerts, metrics, settings, owner_uid,
    )?);
    let edge = http::Edge::open(&tokens, &options).await?;
    ready(&options.socket, tokens.table().len());

    let mut duties = vec![
        tokio::spawn(reloader::run(tokens.clone())),
        tokio::spawn(refresher::run(
            tokens.clone(),
            settings.refresh_before,
            fleet.clone(),
        )),
        tokio::spawn(validator::run(tokens.clone(), config.validation.schedule)),
    ];
    duties.push(tokio::spawn(deadline_watch::run(
        tokens.clone(),
        expiring_before,
    )));
    duties.push(tokio::spawn(rotator::run(tokens.clone())));
    if fleet.is_some() {
        duties.push(tokio::spawn(outbox::run(tokens.clone(), degraded_after)));
    }
    edge.serve(&tokens, shutdown).await;
    for duty in duties {
        duty.abort();
    }
    tokens.audit().flush().await;
    Ok(())
}

/// SIGTERM or SIGINT: how `vault serve` is stopped.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
