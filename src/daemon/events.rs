//! `GET /v1/events`: Server-Sent Events for programs that hold a token for long (an IMAP sync
//! daemon, a web app), so they drop a dead or replaced token at once instead of failing with it.
//! Each event names an account the caller may fetch and what happened to it — a state change or
//! a new access token's expiry — never a token. A client that reconnects with `Last-Event-ID`
//! first gets what it missed from the last [`BACKLOG`] events.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use crate::account::AccountState;

/// Events kept for clients that reconnect.
const BACKLOG: usize = 1024;
/// A comment line this often keeps proxies from closing the stream and finds dead clients.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What happened to an account.
#[derive(Clone, Debug)]
pub enum Happened {
    /// Its state changed.
    State {
        to: AccountState,
        reason: Option<String>,
    },
    /// A new access token replaced the cached one; apps holding the old one may switch.
    Token { expires_at: i64 },
    /// The account's own key was rotated at the provider (ids only).
    KeyRotated { key_id: String },
}

#[derive(Clone, Debug)]
pub struct Event {
    pub id: u64,
    pub account: String,
    pub happened: Happened,
}

impl Event {
    /// The event in the wire format of Server-Sent Events.
    fn to_sse(&self) -> Bytes {
        let (name, data) = match &self.happened {
            Happened::State { to, reason } => (
                "state",
                json!({"account": self.account, "state": to, "reason": reason}),
            ),
            Happened::Token { expires_at } => (
                "token",
                json!({"account": self.account, "expires_at": expires_at}),
            ),
            Happened::KeyRotated { key_id } => (
                "key_rotated",
                json!({"account": self.account, "key_id": key_id}),
            ),
        };
        Bytes::from(format!("id: {}\nevent: {name}\ndata: {data}\n\n", self.id))
    }
}

/// The daemon's event log: a broadcast to live streams and a backlog for reconnects.
pub struct Events {
    live: broadcast::Sender<Event>,
    recent: Mutex<(u64, VecDeque<Event>)>,
}

impl Default for Events {
    fn default() -> Events {
        Events {
            live: broadcast::channel(BACKLOG).0,
            recent: Mutex::new((0, VecDeque::with_capacity(BACKLOG))),
        }
    }
}

impl Events {
    pub fn publish(&self, account: &str, happened: Happened) {
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        recent.0 += 1;
        let event = Event {
            id: recent.0,
            account: account.to_owned(),
            happened,
        };
        if recent.1.len() == BACKLOG {
            recent.1.pop_front();
        }
        recent.1.push_back(event.clone());
        // Under the same lock, so a subscriber sees no gap and no duplicate between the backlog
        // and the live events.
        let _ = self.live.send(event);
    }

    /// A stream of the events `visible` lets through, those after `last_seen` first.
    pub fn subscribe(
        &self,
        last_seen: Option<u64>,
        visible: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> EventBody {
        let (missed, mut live) = match self.recent.lock() {
            Ok(recent) => {
                let missed: Vec<Event> = match last_seen {
                    Some(seen) => recent.1.iter().filter(|e| e.id > seen).cloned().collect(),
                    None => Vec::new(),
                };
                (missed, self.live.subscribe())
            }
            Err(_) => (Vec::new(), self.live.subscribe()),
        };
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            if sender
                .send(Bytes::from_static(b": tokenvault events\n\n"))
                .await
                .is_err()
            {
                return;
            }
            for event in &missed {
                if !forward(&sender, &visible, event).await {
                    return;
                }
            }
            let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
            keep_alive.tick().await;
            loop {
                tokio::select! {
                    received = live.recv() => match received {
                        Ok(event) => if !forward(&sender, &visible, &event).await { return },
                        // Too slow to keep up: the client reconnects with Last-Event-ID.
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = keep_alive.tick() => {
                        if sender.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        EventBody { receiver }
    }
}

/// Sends `event` to the stream if the caller may see its account; false when the client left.
async fn forward(
    sender: &mpsc::Sender<Bytes>,
    visible: &(impl Fn(&str) -> bool + Sync),
    event: &Event,
) -> bool {
    if !visible(&event.account) {
        return true;
    }
    sender.send(event.to_sse()).await.is_ok()
}

/// The body of a `/v1/events` answer: chunks as they come, until the daemon stops.
pub struct EventBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.receiver
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_server_sent_events_without_tokens() {
        let event = Event {
            id: 7,
            account: "mail".into(),
            happened: Happened::Token { expires_at: 99 },
        };
        assert_eq!(
            event.to_sse(),
            "id: 7\nevent: token\ndata: {\"account\":\"mail\",\"expires_at\":99}\n\n"
        );
        let rotated = Event {
            id: 8,
            account: "robot".into(),
            happened: Happened::KeyRotated {
                key_id: "0a1b".into(),
            },
        };
        assert_eq!(
            rotated.to_sse(),
            "id: 8\nevent: key_rotated\ndata: {\"account\":\"robot\",\"key_id\":\"0a1b\"}\n\n"
        );
    }
}
