//! Waking on the fleet's changes. A listening host keeps one more connection in `LISTEN
//! tokenvault`; the database's triggers (schema 008) send `data` when an account or grant changes
//! and `alerts` when an alert row is written, delivered on commit. Waiting for another host's
//! refresh, reloading the account table and delivering alerts then happen when something changed
//! rather than on a timer; while the listening connection is down, those fall back to polling,
//! and it is made again.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

/// How long the listening connection waits for a notification before checking it is alive.
const ALIVE_CHECK: Duration = Duration::from_secs(15);
/// How long after losing the listening connection it is made again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// What `pg_stat_activity` shows for the listening connection.
pub(super) const APPLICATION_NAME: &str = "tokenvault-listen";

/// What has changed so far, as counters, and whether changes are being heard at all.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Heard {
    /// Notifications about accounts and grants.
    pub data: u64,
    /// Notifications about new alert rows.
    pub alerts: u64,
    /// The listening connection is up: no notification means no change.
    pub listening: bool,
}

/// The fleet's changes as this host hears them, for threads (a condition variable) and for
/// async tasks (a watch channel).
pub(super) struct Changes {
    heard: Mutex<Heard>,
    moved: Condvar,
    feed: watch::Sender<Heard>,
}

impl Changes {
    /// Starts listening on a connection of its own, made with `connect`, for as long as the
    /// returned handle lives.
    pub(super) fn listen(
        connect: impl Fn() -> Result<postgres::Client, postgres::Error> + Send + 'static,
    ) -> Arc<Changes> {
        let changes = Arc::new(Changes {
            heard: Mutex::new(Heard::default()),
            moved: Condvar::new(),
            feed: watch::Sender::new(Heard::default()),
        });
        let weak = Arc::downgrade(&changes);
        std::thread::spawn(move || keep_listening(&weak, connect));
        changes
    }

    pub(super) fn now(&self) -> Heard {
        self.heard.lock().map(|heard| *heard).unwrap_or_default()
    }

    /// Waits up to `wait` for a data change after `seen`; false when nothing is heard (the
    /// caller then polls).
    pub(super) fn wait_for_data(&self, seen: Heard, wait: Duration) -> bool {
        let Ok(heard) = self.heard.lock() else {
            return false;
        };
        if !heard.listening {
            return false;
        }
        let _ = self
            .moved
            .wait_timeout_while(heard, wait, |now| now.listening && now.data == seen.data);
        true
    }

    pub(super) fn feed(&self) -> ChangeFeed {
        let heard = self.feed.subscribe();
        let seen = *heard.borrow();
        ChangeFeed { heard, seen }
    }

    fn update(&self, change: impl Fn(&mut Heard)) {
        if let Ok(mut heard) = self.heard.lock() {
            change(&mut heard);
            self.feed.send_replace(*heard);
        }
        self.moved.notify_all();
    }
}

fn keep_listening(
    changes: &Weak<Changes>,
    connect: impl Fn() -> Result<postgres::Client, postgres::Error>,
) {
    while changes.strong_count() > 0 {
        let listening = connect().and_then(|mut client| {
            client.batch_execute("LISTEN tokenvault")?;
            Ok(client)
        });
        if let Ok(mut client) = listening {
            // Anything may have changed while nobody listened: everyone looks once.
            let heard = update(changes, |heard| {
                heard.listening = true;
                heard.data += 1;
                heard.alerts += 1;
            });
            while heard && hear(&mut client, changes) {}
            if !update(changes, |heard| heard.listening = false) {
                return;
            }
        }
        std::thread::sleep(RECONNECT_AFTER);
    }
}

/// Takes in what arrives within `ALIVE_CHECK`, with whatever came along with it; false once the
/// connection is gone or nobody is interested any more.
fn hear(client: &mut postgres::Client, changes: &Weak<Changes>) -> bool {
    use postgres::fallible_iterator::FallibleIterator;
    let (mut data, mut alerts) = (0u64, 0u64);
    {
        let mut count = |notification: postgres::Notification| match notification.payload() {
            "alerts" => alerts += 1,
            _ => data += 1,
        };
        let mut notifications = client.notifications();
        let first = notifications.timeout_iter(ALIVE_CHECK).next();
        if let Ok(Some(first)) = first {
            count(first);
            let mut buffered = notifications.iter();
            while let Ok(Some(more)) = buffered.next() {
                count(more);
            }
        }
    }
    if data + alerts > 0 {
        return update(changes, |heard| {
            heard.data += data;
            heard.alerts += alerts;
        });
    }
    !client.is_closed() && client.is_valid(ALIVE_CHECK).is_ok() && changes.strong_count() > 0
}

fn update(changes: &Weak<Changes>, change: impl Fn(&mut Heard)) -> bool {
    match changes.upgrade() {
        Some(changes) => {
            changes.update(change);
            true
        }
        None => false,
    }
}

/// An async task's view of the fleet's changes.
pub struct ChangeFeed {
    heard: watch::Receiver<Heard>,
    /// What the task had heard when it last went on: anything after that is news.
    seen: Heard,
}

impl ChangeFeed {
    /// Returns once `topic` moved since the last return (at once if it already has), or
    /// hearing stopped or started, or after `quiet` (when listening) / `polling` (when not).
    pub async fn next(&mut self, topic: fn(&Heard) -> u64, quiet: Duration, polling: Duration) {
        let seen = self.seen;
        let wait = if seen.listening { quiet } else { polling };
        let news = self
            .heard
            .wait_for(|now| now.listening != seen.listening || topic(now) != topic(&seen));
        let _ = tokio::time::timeout(wait, news).await;
        self.seen = *self.heard.borrow();
    }
}
