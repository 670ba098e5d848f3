//! The HTTP edge: connections on the socket and the loopback TCP listeners, each admitted under
//! its caller's cap and served as HTTP/1.1. The only place where outcomes become statuses.

mod accept;
mod api;
mod fast;
mod limits;
mod metadata;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::UnixStream;

use super::metrics::ConnectionPath;
use super::tokens::Tokens;
use super::{ServeOptions, ServerError, socket};

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

/// The daemon's listeners: the socket, and the optional loopback metadata and metrics ports.
pub struct Edge {
    /// The socket's accept thread, and the connections it leaves to hyper.
    socket: accept::SocketThread,
    handoffs: tokio::sync::mpsc::UnboundedReceiver<accept::Handoff>,
    /// The socket's path when this daemon created it (not socket-activated), to remove at exit.
    owned_path: Option<PathBuf>,
    metadata: Option<MetadataListener>,
    metrics: Option<tokio::net::TcpListener>,
}

impl Edge {
    /// Binds every listener `options` asks for; any failure stops the start.
    pub async fn open(tokens: &Arc<Tokens>, options: &ServeOptions) -> Result<Edge, ServerError> {
        let group = options
            .socket_group
            .as_deref()
            .map(crate::users::gid_of)
            .transpose()
            .map_err(ServerError::UnknownGroup)?;
        let metadata = match &options.metadata {
            Some((addr, account)) => Some(metadata_listener(tokens, *addr, account).await?),
            None => None,
        };
        let metrics = match options.metrics {
            Some(addr) => Some(loopback_listener("--metrics-addr", addr).await?),
            None => None,
        };
        // Socket activation (systemd's LISTEN_FDS): the socket, its path and modes are the unit's.
        let (socket, owned_path) = match socket::activated_listener(&options.socket)? {
            Some(listener) => (listener, None),
            None => (
                socket::bind(&options.socket, group).await?,
                Some(options.socket.clone()),
            ),
        };
        let caps = limits::ConnectionCaps::new(SOCKET_CONNECTIONS_PER_CALLER, tokens.owner().uid);
        let (handoffs_in, handoffs) = tokio::sync::mpsc::unbounded_channel();
        let socket =
            accept::start(socket, tokens.clone(), caps, handoffs_in).map_err(|source| {
                ServerError::Socket {
                    path: options.socket.clone(),
                    source,
                }
            })?;
        Ok(Edge {
            socket,
            handoffs,
            owned_path,
            metadata,
            metrics,
        })
    }

    /// Accepts until `shutdown` completes, then gives what is in flight a while to finish.
    pub async fn serve(
        self,
        tokens: &Arc<Tokens>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let owner_uid = tokens.owner().uid;
        let graceful = GracefulShutdown::new();
        let metadata_caps = limits::ConnectionCaps::new(METADATA_CONNECTIONS_PER_CALLER, owner_uid);
        let metrics_caps = limits::ConnectionCaps::new(METADATA_CONNECTIONS_PER_CALLER, owner_uid);
        let mut handoffs = self.handoffs;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                Some(handoff) = handoffs.recv() => serve_handoff(handoff, tokens, &graceful),
                accepted = accept_tcp(self.metadata.as_ref().map(|(listener, _)| listener)) => {
                    if let (Ok((stream, _)), Some((_, account))) = (accepted, &self.metadata) {
                        serve_metadata_connection(stream, tokens, account, &metadata_caps, &graceful);
                    }
                }
                accepted = accept_tcp(self.metrics.as_ref()) => {
                    if let Ok((stream, _)) = accepted {
                        serve_metrics_connection(stream, tokens, &metrics_caps, &graceful);
                    }
                }
                _ = &mut shutdown => break,
            }
        }
        // The socket closes when its thread stops: no new connection from here on.
        self.socket.stop();
        while let Ok(handoff) = handoffs.try_recv() {
            serve_handoff(handoff, tokens, &graceful);
        }
        if let Some(path) = self.owned_path {
            let _ = std::fs::remove_file(path);
        }
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    }
}

/// A connection the socket's thread did not answer itself: served by hyper on this runtime.
fn serve_handoff(handoff: accept::Handoff, tokens: &Arc<Tokens>, graceful: &GracefulShutdown) {
    let accept::Handoff {
        stream,
        peer,
        admitted,
    } = handoff;
    let Ok(stream) = UnixStream::from_std(stream) else {
        return;
    };
    tokens.metrics().connection(ConnectionPath::Http);
    let tokens = tokens.clone();
    let service = service_fn(move |request| {
        let tokens = tokens.clone();
        async move { Ok::<_, std::convert::Infallible>(api::handle(request, peer, tokens).await) }
    });
    spawn_connection(stream, service, admitted, graceful);
}

/// Serves one admitted connection on a task of its own (see `serve_http`).
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
    tokio::spawn(serve_http(stream, service, admitted, graceful.watcher()));
}

/// Serves one admitted connection: HTTP/1.1, writes under a deadline, its place in the caps
/// held until it closes, drained at shutdown.
async fn serve_http<I, S>(stream: I, service: S, admitted: limits::Admitted, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = api::Body> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(limits::WriteDeadline::new(stream));
    let _ = watcher
        .watch(http1_builder().serve_connection(io, service))
        .await;
    drop(admitted);
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
