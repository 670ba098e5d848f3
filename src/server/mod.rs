//! `vault serve`: the daemon that hands out access tokens over a Unix socket.

mod api;
mod events;
mod limits;
mod metadata;
pub mod metrics;
pub mod tokens;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};

use crate::alert::Alerts;
use crate::audit::Audit;
use crate::config::Config;
use crate::store::Store;
use tokens::{Peer, RefreshSettings, Tokens};

/// A slow sender must finish its request head within this time, or the connection is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests are tiny; hyper's smallest buffer bounds a request head (oversized → 431).
const MAX_BUFFER: usize = 8 * 1024;
/// Open connections per caller uid (other than the vault's owner) on the socket: far more than
/// a granted user's apps need at once, far fewer than the daemon's file descriptors.
const SOCKET_CONNECTIONS_PER_CALLER: usize = 512;
/// Open connections per caller on the metadata endpoint (its clients make one or two).
const METADATA_CONNECTIONS_PER_CALLER: usize = 64;
/// How long in-flight requests get to finish after SIGTERM/SIGINT.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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

/// `tokenvault/vault.sock` in the user's runtime directory: `$XDG_RUNTIME_DIR`, else the one
/// logind made (`/run/user/UID`, so cron jobs and `su` sessions find a socket-activated
/// daemon), else the user's state directory (`~/.local/state`). Never a shared directory such as
/// /tmp: another user could create the directory first and answer in the daemon's place.
pub fn default_socket_path() -> PathBuf {
    runtime_dir()
        .or_else(|| directories::BaseDirs::new().map(|dirs| state_dir(&dirs)))
        .unwrap_or_else(|| PathBuf::from(".tokenvault"))
        .join("tokenvault/vault.sock")
}

fn runtime_dir() -> Option<PathBuf> {
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        return Some(PathBuf::from(runtime));
    }
    let me = rustix::process::geteuid().as_raw();
    let logind = PathBuf::from(format!("/run/user/{me}"));
    crate::files::check_private_dir(&logind, me)
        .is_ok()
        .then_some(logind)
}

fn state_dir(dirs: &directories::BaseDirs) -> PathBuf {
    dirs.state_dir()
        .map(Path::to_owned)
        .unwrap_or_else(|| dirs.home_dir().join(".local/state"))
}

/// Serves until `shutdown` completes, then answers what is in flight and removes the socket.
/// `ready` is told the socket and the number of accounts once the socket accepts.
pub async fn serve(
    store: Store,
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
    let expiring_before = config.alert.expiring_before_seconds;
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
    let tokens = Arc::new(Tokens::load(
        store, audit, alerts, metrics, settings, owner_uid,
    )?);
    let group = options
        .socket_group
        .as_deref()
        .map(crate::users::gid_of)
        .transpose()
        .map_err(ServerError::UnknownGroup)?;
    let metadata = match &options.metadata {
        Some((addr, account)) => Some(metadata_listener(&tokens, *addr, account).await?),
        None => None,
    };
    let metrics_listener = match options.metrics {
        Some(addr) => Some(loopback_listener("--metrics-addr", addr).await?),
        None => None,
    };
    // Socket activation (systemd's LISTEN_FDS): the socket, its path and modes are the unit's.
    let activated = activated_listener(&options.socket)?;
    let owns_socket = activated.is_none();
    let listener = match activated {
        Some(listener) => listener,
        None => bind(&options.socket, group).await?,
    };
    ready(&options.socket, tokens.account_count());

    let reloader = tokio::spawn({
        let tokens = tokens.clone();
        async move {
            let mut every = tokio::time::interval(tokens::RELOAD_EVERY);
            loop {
                every.tick().await;
                tokens.reload_if_changed().await;
            }
        }
    });
    let refresher = tokio::spawn(crate::refresher::run(
        tokens.clone(),
        settings.refresh_before,
    ));
    let validator = tokio::spawn(crate::validator::run(
        tokens.clone(),
        config.validation.schedule,
    ));
    let deadline_watch = tokio::spawn(crate::deadline_watch::run(tokens.clone(), expiring_before));
    let graceful = GracefulShutdown::new();
    let socket_caps = limits::ConnectionCaps::new(SOCKET_CONNECTIONS_PER_CALLER, owner_uid);
    let metadata_caps = limits::ConnectionCaps::new(METADATA_CONNECTIONS_PER_CALLER, owner_uid);
    let metrics_caps = limits::ConnectionCaps::new(METADATA_CONNECTIONS_PER_CALLER, owner_uid);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve_connection(stream, &tokens, &socket_caps, &graceful),
                // Out of file descriptors and the like: keep serving the connections we have.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            accepted = accept_tcp(metadata.as_ref().map(|(listener, _)| listener)) => {
                if let (Ok((stream, _)), Some((_, account))) = (accepted, &metadata) {
                    serve_metadata_connection(stream, &tokens, account, &metadata_caps, &graceful);
                }
            }
            accepted = accept_tcp(metrics_listener.as_ref()) => {
                if let Ok((stream, _)) = accepted {
                    serve_metrics_connection(stream, &tokens, &metrics_caps, &graceful);
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if owns_socket {
        let _ = std::fs::remove_file(&options.socket);
    }
    for duty in [reloader, refresher, validator, deadline_watch] {
        duty.abort();
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    tokens.audit().flush().await;
    Ok(())
}

fn serve_connection(
    stream: UnixStream,
    tokens: &Arc<Tokens>,
    caps: &Arc<limits::ConnectionCaps>,
    graceful: &GracefulShutdown,
) {
    let Ok(credentials) = stream.peer_cred() else {
        return;
    };
    let peer = Peer {
        uid: credentials.uid(),
        gid: credentials.gid(),
        pid: credentials.pid(),
    };
    // A caller holding its share already: the new connection is closed at once.
    let Some(admitted) = caps.admit(Some(peer.uid)) else {
        return;
    };
    let tokens = tokens.clone();
    let service = service_fn(move |request| {
        let tokens = tokens.clone();
        async move { Ok::<_, std::convert::Infallible>(api::handle(request, peer, tokens).await) }
    });
    spawn_connection(stream, service, admitted, graceful);
}

/// Serves one admitted connection: HTTP/1.1, writes under a deadline, its place in the caps
/// held until it closes.
fn spawn_connection<I, S>(
    stream: I,
    service: S,
    admitted: limits::Admitted,
    graceful: &GracefulShutdown,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = api::Body> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(limits::WriteDeadline::new(stream));
    let connection = http1_builder().serve_connection(io, service);
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        let _ = connection.await;
        drop(admitted);
    });
}

/// HTTP/1.1 with keep-alive, a bounded request head and a deadline for it.
fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUFFER)
        .keep_alive(true);
    builder
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

type MetadataListener = (tokio::net::TcpListener, Arc<metadata::MetadataAccount>);

/// A TCP listener on a loopback address only: TCP carries no peer credentials.
async fn loopback_listener(
    option: &str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, ServerError> {
    if !addr.ip().is_loopback() {
        return Err(ServerError::Metadata(format!(
            "{option} {addr} is not a loopback address; TCP has no peer checks, use 127.0.0.1"
        )));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| ServerError::Metadata(format!("{option}: cannot listen on {addr}: {err}")))
}

/// Binds the metadata endpoint: loopback only, and only for an account that exists.
async fn metadata_listener(
    tokens: &Tokens,
    addr: std::net::SocketAddr,
    account: &str,
) -> Result<MetadataListener, ServerError> {
    let email = tokens.service_account_email(account).ok_or_else(|| {
        ServerError::Metadata(format!("--metadata-account: no account named {account:?}"))
    })?;
    let listener = loopback_listener("--metadata-addr", addr).await?;
    Ok((
        listener,
        Arc::new(metadata::MetadataAccount {
            name: account.to_owned(),
            email,
        }),
    ))
}

/// The next connection on an optional TCP listener; never, without one.
async fn accept_tcp(
    listener: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The uid behind a loopback TCP connection, when the kernel's socket table shows it.
fn tcp_caller(stream: &tokio::net::TcpStream) -> Option<u32> {
    match (stream.peer_addr(), stream.local_addr()) {
        (Ok(client), Ok(ours)) => metadata::tcp_peer_uid(client, ours),
        _ => None,
    }
}

/// The loopback metrics endpoint: `GET /metrics` (or `/v1/metrics`), for Prometheus.
fn serve_metrics_connection(
    stream: tokio::net::TcpStream,
    tokens: &Arc<Tokens>,
    caps: &Arc<limits::ConnectionCaps>,
    graceful: &GracefulShutdown,
) {
    let Some(admitted) = caps.admit(tcp_caller(&stream)) else {
        return;
    };
    let tokens = tokens.clone();
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let tokens = tokens.clone();
        async move { Ok::<_, std::convert::Infallible>(api::metrics_only(request, &tokens).await) }
    });
    spawn_connection(stream, service, admitted, graceful);
}

fn serve_metadata_connection(
    stream: tokio::net::TcpStream,
    tokens: &Arc<Tokens>,
    account: &Arc<metadata::MetadataAccount>,
    caps: &Arc<limits::ConnectionCaps>,
    graceful: &GracefulShutdown,
) {
    let caller = tcp_caller(&stream);
    let Some(admitted) = caps.admit(caller) else {
        return;
    };
    let (tokens, account) = (tokens.clone(), account.clone());
    let owner = tokens.owner();
    let service = service_fn(move |request| {
        let (tokens, account) = (tokens.clone(), account.clone());
        async move {
            Ok::<_, std::convert::Infallible>(
                metadata::handle(request, tokens, account, owner, caller)
                    .await
                    .map(api::Body::Left),
            )
        }
    });
    spawn_connection(stream, service, admitted, graceful);
}

/// The listening socket systemd passed (LISTEN_FDS / LISTEN_PID), if any.
fn activated_listener(socket: &Path) -> Result<Option<UnixListener>, ServerError> {
    let mut passed = listenfd::ListenFd::from_env();
    let Some(listener) = passed.take_unix_listener(0).map_err(socket_error(socket))? else {
        return Ok(None);
    };
    listener
        .set_nonblocking(true)
        .map_err(socket_error(socket))?;
    UnixListener::from_std(listener)
        .map(Some)
        .map_err(socket_error(socket))
}

fn socket_error(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Socket {
        path: path.to_owned(),
        source,
    }
}

/// Prepares the socket's directory, then binds the socket (0600, or 0660 for a group),
/// refusing when a live daemon answers on it and replacing a stale socket file.
async fn bind(socket: &Path, group: Option<u32>) -> Result<UnixListener, ServerError> {
    let dir = socket
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    prepare_socket_dir(dir, group)?;
    if socket.symlink_metadata().is_ok() {
        if UnixStream::connect(socket).await.is_ok() {
            return Err(ServerError::AlreadyRunning(socket.to_owned()));
        }
        std::fs::remove_file(socket).map_err(socket_error(socket))?;
    }
    // Born 0700 under the process umask (077), in a directory only this user can write to.
    let listener = UnixListener::bind(socket).map_err(socket_error(socket))?;
    let mode = match group {
        Some(gid) => {
            rustix::fs::chown(socket, None, Some(rustix::process::Gid::from_raw(gid)))
                .map_err(|err| socket_error(socket)(err.into()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .map_err(socket_error(socket))?;
    Ok(listener)
}

/// The socket's directory must be the user's own and closed to others' writes. It is created
/// with one non-recursive mkdir (its parent made first when missing), and only a directory this
/// call created gets its mode or group set: an existing one, or a symlink planted at its place,
/// is checked through a descriptor opened without following links, and never changed.
fn prepare_socket_dir(dir: &Path, group: Option<u32>) -> Result<(), ServerError> {
    use rustix::fs::{Mode, OFlags};
    if let Some(parent) = dir
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty() && !parent.exists())
    {
        crate::files::create_private_dir(parent).map_err(socket_error(parent))?;
    }
    let created = match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o700)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(err) => return Err(socket_error(dir)(err.into())),
    };
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| {
        let problem = if err == rustix::io::Errno::LOOP || err == rustix::io::Errno::NOTDIR {
            crate::files::DirProblem::Symlink(dir.display().to_string())
        } else {
            crate::files::DirProblem::Io {
                path: dir.display().to_string(),
                source: err.into(),
            }
        };
        ServerError::UnsafeDirectory(problem)
    })?;
    let meta = std::fs::File::from(fd);
    let stat = meta.metadata().map_err(socket_error(dir))?;
    let owner = rustix::process::geteuid().as_raw();
    crate::files::check_dir_metadata(&stat, owner, &dir.display().to_string())
        .map_err(ServerError::UnsafeDirectory)?;
    match (group, created) {
        (Some(gid), true) => {
            rustix::fs::fchown(&meta, None, Some(rustix::process::Gid::from_raw(gid)))
                .and_then(|()| rustix::fs::fchmod(&meta, Mode::from_raw_mode(0o750)))
                .map_err(|err| socket_error(dir)(err.into()))?;
        }
        (Some(gid), false) if stat.gid() != gid || stat.mode() & 0o010 == 0 => {
            return Err(ServerError::GroupCannotReach(dir.to_owned()));
        }
        _ => {}
    }
    Ok(())
}
