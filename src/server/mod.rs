//! `vault serve`: the daemon that hands out access tokens over a Unix socket.

mod api;
mod metadata;
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
/// How long in-flight requests get to finish after SIGTERM/SIGINT.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("another vault daemon is already serving {0}; stop it first (or use --socket)")]
    AlreadyRunning(PathBuf),
    #[error(
        "the socket directory {0} belongs to another user or is writable by others; refusing to use it"
    )]
    UnsafeDirectory(PathBuf),
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
    #[error(transparent)]
    Vault(#[from] crate::error::Error),
}

pub struct ServeOptions {
    pub socket: PathBuf,
    /// Widen the socket (0660) and its directory (0750) to this group.
    pub socket_group: Option<String>,
    /// Also answer as a Compute Engine metadata server for one account, on loopback TCP.
    pub metadata: Option<(std::net::SocketAddr, String)>,
}

/// `$XDG_RUNTIME_DIR/tokenvault/vault.sock`, else a per-user directory under /tmp.
pub fn default_socket_path() -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(runtime) if !runtime.is_empty() => PathBuf::from(runtime).join("tokenvault"),
        _ => std::env::temp_dir().join(format!(
            "tokenvault-{}",
            rustix::process::geteuid().as_raw()
        )),
    };
    dir.join("vault.sock")
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
    let audit = Audit::start(store.dir()).map_err(|source| ServerError::Socket {
        path: store.dir().join("audit.log"),
        source,
    })?;
    let config = Config::load(store.dir()).map_err(ServerError::Config)?;
    let alerts = Alerts::start(config.alert, crate::oauth::token::http_client());
    let settings = RefreshSettings {
        refresh_before: config.refresh.before_seconds,
        max_backoff: config.refresh.max_backoff_seconds,
    };
    let tokens = Arc::new(Tokens::load(store, audit, alerts, settings, owner_uid)?);
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
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve_connection(stream, &tokens, &graceful),
                // Out of file descriptors and the like: keep serving the connections we have.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            accepted = accept_metadata(&metadata) => {
                if let (Ok((stream, _)), Some((_, account))) = (accepted, &metadata) {
                    serve_metadata_connection(stream, &tokens, account, &graceful);
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if owns_socket {
        let _ = std::fs::remove_file(&options.socket);
    }
    for duty in [reloader, refresher, validator] {
        duty.abort();
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    tokens.audit().flush().await;
    Ok(())
}

fn serve_connection(stream: UnixStream, tokens: &Arc<Tokens>, graceful: &GracefulShutdown) {
    let Ok(credentials) = stream.peer_cred() else {
        return;
    };
    let peer = Peer {
        uid: credentials.uid(),
        gid: credentials.gid(),
        pid: credentials.pid(),
    };
    let tokens = tokens.clone();
    let service = service_fn(move |request| {
        let tokens = tokens.clone();
        async move { Ok::<_, std::convert::Infallible>(api::handle(request, peer, tokens).await) }
    });
    let connection = http1_builder().serve_connection(TokioIo::new(stream), service);
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        let _ = connection.await;
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

/// Binds the metadata endpoint: loopback only, and only for an account that exists.
async fn metadata_listener(
    tokens: &Tokens,
    addr: std::net::SocketAddr,
    account: &str,
) -> Result<MetadataListener, ServerError> {
    if !addr.ip().is_loopback() {
        return Err(ServerError::Metadata(format!(
            "--metadata-addr {addr} is not a loopback address; the metadata endpoint has no peer checks, use 127.0.0.1"
        )));
    }
    let email = tokens.service_account_email(account).ok_or_else(|| {
        ServerError::Metadata(format!("--metadata-account: no account named {account:?}"))
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| ServerError::Metadata(format!("cannot listen on {addr}: {err}")))?;
    Ok((
        listener,
        Arc::new(metadata::MetadataAccount {
            name: account.to_owned(),
            email,
        }),
    ))
}

async fn accept_metadata(
    metadata: &Option<MetadataListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match metadata {
        Some((listener, _)) => listener.accept().await,
        None => std::future::pending().await,
    }
}

fn serve_metadata_connection(
    stream: tokio::net::TcpStream,
    tokens: &Arc<Tokens>,
    account: &Arc<metadata::MetadataAccount>,
    graceful: &GracefulShutdown,
) {
    let (tokens, account) = (tokens.clone(), account.clone());
    let owner = tokens.owner();
    let service = service_fn(move |request| {
        let (tokens, account) = (tokens.clone(), account.clone());
        async move {
            Ok::<_, std::convert::Infallible>(
                metadata::handle(request, tokens, account, owner).await,
            )
        }
    });
    let connection = http1_builder().serve_connection(TokioIo::new(stream), service);
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        let _ = connection.await;
    });
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

/// Creates the socket's directory (0700, or 0750 for a group) and the socket (0600 / 0660),
/// refusing when a live daemon answers on it and replacing a stale socket file.
async fn bind(socket: &Path, group: Option<u32>) -> Result<UnixListener, ServerError> {
    let dir = socket
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::files::create_private_dir(dir).map_err(socket_error(dir))?;
    let meta = std::fs::metadata(dir).map_err(socket_error(dir))?;
    let owner = rustix::process::geteuid().as_raw();
    if meta.uid() != owner || meta.permissions().mode() & 0o022 != 0 {
        return Err(ServerError::UnsafeDirectory(dir.to_owned()));
    }
    if socket.exists() {
        if UnixStream::connect(socket).await.is_ok() {
            return Err(ServerError::AlreadyRunning(socket.to_owned()));
        }
        std::fs::remove_file(socket).map_err(socket_error(socket))?;
    }
    let listener = UnixListener::bind(socket).map_err(socket_error(socket))?;
    let (dir_mode, socket_mode) = if group.is_some() {
        (0o750, 0o660)
    } else {
        (0o700, 0o600)
    };
    if let Some(gid) = group {
        let gid = Some(rustix::process::Gid::from_raw(gid));
        for path in [dir, socket] {
            rustix::fs::chown(path, None, gid).map_err(|err| socket_error(path)(err.into()))?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))
        .map_err(socket_error(dir))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(socket_mode))
        .map_err(socket_error(socket))?;
    Ok(listener)
}
