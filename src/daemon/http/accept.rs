//! The socket's accept loop runs on a thread of its own, waiting in `poll` as the simplest
//! servers do. A new connection whose token request the fast path answers (`fast`) is handled
//! entirely on the thread the kernel woke for it — no runtime to park and unpark, no other
//! thread woken — which is what made each `vault token` cost the daemon several times what a
//! blocking server spends. A connection whose request has not arrived yet is watched here for
//! a moment (up to `MAX_WAITING` at once, `FIRST_BYTES` each); every other connection is handed,
//! unread, to the main runtime's HTTP server.

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use tokio::sync::mpsc;

use super::fast::{self, Tried};
use super::limits::{Admitted, ConnectionCaps};
use crate::daemon::metrics::ConnectionPath;
use crate::daemon::table::Peer;
use crate::daemon::tokens::Tokens;

/// How long a new connection's first bytes are awaited for the fast path; a client this slow
/// is served the general way (whose header deadline then applies).
const FIRST_BYTES: Duration = Duration::from_millis(50);
/// Connections watched at once for their first bytes; more go the general way at once, so that
/// a flood of silent connections cannot make each wait longer.
const MAX_WAITING: usize = 64;
/// Other users' share of those: each at most a quarter, together at most half, so that no
/// flood of theirs keeps the owner's `vault token` off the fast path.
const MAX_WAITING_PER_OTHER_USER: usize = MAX_WAITING / 4;
const MAX_WAITING_FOR_OTHERS: usize = MAX_WAITING / 2;

/// A connection for the main runtime's HTTP server: admitted under its caller's cap, nothing
/// read from it.
pub struct Handoff {
    pub stream: UnixStream,
    pub peer: Peer,
    pub admitted: Admitted,
}

/// The running accept thread.
pub struct SocketThread {
    listener: Arc<UnixListener>,
    thread: std::thread::JoinHandle<()>,
}

impl SocketThread {
    /// Stops accepting and closes the socket; returns once the thread has ended.
    pub fn stop(self) {
        // `poll` reports a hang-up on a listening socket once it is shut down.
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Both);
        let _ = self.thread.join();
    }
}

/// Starts accepting on `listener` in a thread of its own.
pub fn start(
    listener: tokio::net::UnixListener,
    tokens: Arc<Tokens>,
    caps: Arc<ConnectionCaps>,
    handoffs: mpsc::UnboundedSender<Handoff>,
) -> std::io::Result<SocketThread> {
    // Non-blocking: `poll` says when to accept, and a connection gone by then must not block.
    let listener = listener.into_std()?;
    let listener = Arc::new(listener);
    let accepting = listener.clone();
    let thread = std::thread::Builder::new()
        .name("vault-socket".into())
        .spawn(move || accept_loop(&accepting, &tokens, &caps, &handoffs))?;
    Ok(SocketThread { listener, thread })
}

/// Connections whose request has not arrived yet, watched on this thread for a moment.
struct Waiting {
    stream: UnixStream,
    peer: Peer,
    admitted: Admitted,
    until: Instant,
}

fn accept_loop(
    listener: &UnixListener,
    tokens: &Tokens,
    caps: &Arc<ConnectionCaps>,
    handoffs: &mpsc::UnboundedSender<Handoff>,
) {
    let mut waiting: Vec<Waiting> = Vec::new();
    loop {
        let (listener_ready, ready) = match wait(listener, &waiting) {
            Ok(readiness) => readiness,
            Err(_) => return,
        };
        match listener_ready {
            Listener::Idle => {}
            // Shut down (`SocketThread::stop`): done.
            Listener::Closed => return,
            Listener::Ready => match listener.accept() {
                Ok((stream, _)) => admit(stream, tokens, caps, handoffs, &mut waiting),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                // Out of file descriptors and the like: keep serving the connections we have.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            },
        }
        serve_waiting(&mut waiting, &ready, tokens, handoffs);
        if handoffs.is_closed() {
            return;
        }
    }
}

/// What `poll` said of the listening socket.
enum Listener {
    Idle,
    /// A connection waits to be accepted.
    Ready,
    /// Shut down by `SocketThread::stop` (hang-up), or failed.
    Closed,
}

/// Blocks until the listener or a waiting connection is readable, or the first wait ends:
/// what the listener is, and which waiting connections are readable.
fn wait(listener: &UnixListener, waiting: &[Waiting]) -> std::io::Result<(Listener, Vec<bool>)> {
    let mut fds = Vec::with_capacity(waiting.len() + 1);
    fds.push(PollFd::new(listener, PollFlags::IN));
    fds.extend(
        waiting
            .iter()
            .map(|connection| PollFd::new(&connection.stream, PollFlags::IN)),
    );
    let timeout = waiting
        .iter()
        .map(|connection| connection.until.saturating_duration_since(Instant::now()))
        .min()
        .and_then(|left| Timespec::try_from(left).ok());
    match rustix::event::poll(&mut fds, timeout.as_ref()) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(err) => return Err(err.into()),
    }
    let ready = |fd: &PollFd<'_>| !fd.revents().is_empty();
    let listener = fds[0].revents();
    let listener = if listener.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
        Listener::Closed
    } else if listener.contains(PollFlags::IN) {
        Listener::Ready
    } else {
        Listener::Idle
    };
    Ok((listener, fds[1..].iter().map(ready).collect()))
}

/// Tries the fast path again on the waiting connections that became readable, and hands over
/// those that are not for it or waited long enough.
fn serve_waiting(
    waiting: &mut Vec<Waiting>,
    ready: &[bool],
    tokens: &Tokens,
    handoffs: &mpsc::UnboundedSender<Handoff>,
) {
    let now = Instant::now();
    // From the end: `swap_remove` then moves into `index` a connection already seen (or one
    // admitted after the poll, which waits for the next one).
    for index in (0..ready.len()).rev() {
        let connection = &waiting[index];
        let tried = if ready[index] {
            fast::try_answer(&connection.stream, connection.peer, tokens)
        } else {
            Tried::NotArrived
        };
        match tried {
            Tried::NotArrived if now < connection.until => {}
            Tried::Answered => {
                waiting.swap_remove(index);
                tokens.metrics().connection(ConnectionPath::AfterWait);
            }
            Tried::NotArrived | Tried::NotForMe => {
                let connection = waiting.swap_remove(index);
                hand_off(
                    connection.stream,
                    connection.peer,
                    connection.admitted,
                    handoffs,
                );
            }
        }
    }
}

/// Admits a connection under its caller's cap, answers it if the fast path can, else watches
/// it for a moment or hands it over.
fn admit(
    stream: UnixStream,
    tokens: &Tokens,
    caps: &Arc<ConnectionCaps>,
    handoffs: &mpsc::UnboundedSender<Handoff>,
    waiting: &mut Vec<Waiting>,
) {
    let Ok(credentials) = rustix::net::sockopt::socket_peercred(&stream) else {
        return;
    };
    let peer = Peer {
        uid: credentials.uid.as_raw(),
        gid: credentials.gid.as_raw(),
        pid: Some(credentials.pid.as_raw_nonzero().get()),
    };
    // A caller holding its share already: the new connection is closed at once.
    let Some(admitted) = caps.admit(Some(peer.uid)) else {
        return;
    };
    match fast::try_answer(&stream, peer, tokens) {
        Tried::Answered => tokens.metrics().connection(ConnectionPath::AtAccept),
        // `vault token` checks who listens between connecting and sending, so its request
        // often arrives a moment after the accept.
        Tried::NotArrived
            if may_wait(
                waiting.iter().map(|w| w.peer.uid),
                peer.uid,
                tokens.table().owner_uid(),
            ) =>
        {
            waiting.push(Waiting {
                stream,
                peer,
                admitted,
                until: Instant::now() + FIRST_BYTES,
            });
        }
        Tried::NotArrived | Tried::NotForMe => hand_off(stream, peer, admitted, handoffs),
    }
}

/// Whether a connection of user `uid` may wait for its first bytes here, beside connections of
/// the `waiting` users: while there is room, and for a user other than the owner only within
/// the others' shares.
fn may_wait(waiting: impl Iterator<Item = u32> + Clone, uid: u32, owner: u32) -> bool {
    if waiting.clone().count() >= MAX_WAITING {
        return false;
    }
    if uid == owner {
        return true;
    }
    let others = waiting.clone().filter(|&other| other != owner).count();
    let same = waiting.filter(|&other| other == uid).count();
    others < MAX_WAITING_FOR_OTHERS && same < MAX_WAITING_PER_OTHER_USER
}

fn hand_off(
    stream: UnixStream,
    peer: Peer,
    admitted: Admitted,
    handoffs: &mpsc::UnboundedSender<Handoff>,
) {
    if stream.set_nonblocking(true).is_ok() {
        let _ = handoffs.send(Handoff {
            stream,
            peer,
            admitted,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: u32 = 1000;

    fn may(waiting: &[u32], uid: u32) -> bool {
        may_wait(waiting.iter().copied(), uid, OWNER)
    }

    #[test]
    fn other_users_keep_to_their_shares_and_the_owner_has_the_rest() {
        let one_other = vec![65534; MAX_WAITING_PER_OTHER_USER];
        assert!(!may(&one_other, 65534), "one user beyond a quarter");
        assert!(may(&one_other, 33) && may(&one_other, OWNER));
        let others: Vec<u32> = (0..MAX_WAITING_FOR_OTHERS as u32)
            .map(|i| 2000 + i)
            .collect();
        assert!(!may(&others, 5000), "others together beyond half");
        assert!(may(&others, OWNER));
        let full = vec![OWNER; MAX_WAITING];
        assert!(!may(&full, OWNER) && !may(&full, 65534));
    }
}
