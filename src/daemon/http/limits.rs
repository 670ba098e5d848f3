//! What one caller may hold of the daemon: a bounded number of open connections per uid, and
//! connections whose answers must be read. Without these, any local user who can reach a
//! listener could open connections (or pipeline requests and never read the answers) until the
//! daemon runs out of file descriptors, and `vault token` stalls for everyone.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A write that makes no progress for this long fails, and the connection closes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Open connections per caller uid on one listener. The vault's owner is not counted: processes
/// of the owner's uid can do anything the daemon can (SECURITY.md), and a thousand of its own
/// programs asking at once is a load the daemon must carry.
pub struct ConnectionCaps {
    per_caller: usize,
    owner: u32,
    open: Mutex<HashMap<Option<u32>, usize>>,
}

/// One admitted connection; dropping it frees its place.
pub struct Admitted {
    /// `None` for the owner's connections, which take no place.
    counted: Option<(Arc<ConnectionCaps>, Option<u32>)>,
}

impl ConnectionCaps {
    pub fn new(per_caller: usize, owner: u32) -> Arc<ConnectionCaps> {
        Arc::new(ConnectionCaps {
            per_caller,
            owner,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a connection of `caller` (a uid; `None` when it cannot be learned, and all
    /// such callers share one allowance), or `None` when it already holds its share.
    pub fn admit(self: &Arc<Self>, caller: Option<u32>) -> Option<Admitted> {
        if caller == Some(self.owner) {
            return Some(Admitted { counted: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(caller).or_default();
        if *count >= self.per_caller {
            return None;
        }
        *count += 1;
        Some(Admitted {
            counted: Some((self.clone(), caller)),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some((caps, caller)) = &self.counted else {
            return;
        };
        let mut open = caps.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(caller) {
            *count -= 1;
            if *count == 0 {
                open.remove(caller);
            }
        }
    }
}

/// A stream whose writes fail after [`WRITE_TIMEOUT`] without progress: a client that sends
/// requests and never reads the answers cannot keep its connection forever.
pub struct WriteDeadline<S> {
    inner: S,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            stalled_since: None,
        }
    }

    /// Passes a finished write through (and forgets the stall); a pending one arms the timer.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled_since = None;
            return poll;
        }
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client does not read its answers",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_gets_its_own_share() {
        let caps = ConnectionCaps::new(2, 0);
        let first = caps.admit(Some(1000)).unwrap();
        let _second = caps.admit(Some(1000)).unwrap();
        assert!(caps.admit(Some(1000)).is_none(), "uid 1000 is full");
        assert!(caps.admit(Some(1001)).is_some(), "others are not affected");
        let owners: Vec<_> = (0..10).map(|_| caps.admit(Some(0)).unwrap()).collect();
        assert_eq!(owners.len(), 10, "the owner is not counted");
        drop(first);
        assert!(
            caps.admit(Some(1000)).is_some(),
            "a closed connection frees its place"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_is_cut_off() {
        use tokio::io::AsyncWriteExt;
        let (server, _client) = tokio::io::duplex(64);
        let mut server = WriteDeadline::new(server);
        let flood = vec![b'x'; 1 << 20];
        let err = server.write_all(&flood).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
