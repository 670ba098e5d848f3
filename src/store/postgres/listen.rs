//! Waking on the fleet's changes. A listening host keeps one more connection in `LISTEN
//! tokenvault`; the database's triggers (schema 008) send `data` when an account or grant changes
//! and `alerts` when an alert row is written, delivered on commit. Waiting for another host's
//! refresh, reloading the account table and delivering alerts then happen when something changed
//! rather than on a timer; while the listening connection is down, those fall back to polling,
//! and it is made again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

/// How long the listening connection waits for a notification before checking it is alive.
const ALIVE_CHECK: Duration = Duration::from_secs(15);
/// How long after losing the listening connection it is made again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// How many accounts' notifications are remembered at most (a big fleet has 100,000 accounts).
const MAX_ACCOUNTS_HEARD: usize = 200_000;
/// What `pg_stat_activity` shows for the listening connection.
pub(super) const APPLICATION_NAME: &str = "tokenvault-listen";

/// What has changed so far, as counters, and whether changes are being heard at all.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Heard {
    /// Notifications that anything may have changed (grants, a rekey, the listener starting
    /// again, a flood of account notifications).
    pub data: u64,
    /// Notifications about single accounts (their ids wait in `Changes::take_changed_accounts`).
    pub accounts: u64,
    /// Notifications about new alert rows.
    pub alerts: u64,
    /// The listening connection is up: no notification means no change.
    pub listening: bool,
}

/// The fleet's changes as this host hears them, for threads (a condition variable) and for
/// async tasks (a watch channel).
pub(super) struct Changes {
    heard: Mutex<Hearing>,
    moved: Condvar,
    feed: watch::Sender<Heard>,
}

/// What the listening thread has taken in.
#[derive(Default)]
struct Hearing {
    heard: Heard,
    /// Changes heard per account id (what a host waiting for one account's refresh waits on).
    accounts: HashMap<i64, u64>,
    /// Accounts heard of since the daemon last reloaded them.
    changed: HashSet<i64>,
}

/// One notification's meaning.
enum News {
    Account(i64),
    Data,
    Alerts,
}

impl News {
    fn of(payload: &str) -> News {
        match payload.strip_prefix("account:").map(str::parse) {
            Some(Ok(id)) => News::Account(id),
            _ if payload == "alerts" => News::Alerts,
            _ => News::Data,
        }
    }
}

impl Changes {
    /// Starts listening on a connection of its own, made with `connect`, for as long as the
    /// returned handle lives.
    pub(super) fn listen(
        connect: impl Fn() -> Result<postgres::Client, postgres::Error> + Send + 'static,
    ) -> Arc<Changes> {
        let changes = Arc::new(Changes {
            heard: Mutex::new(Hearing::default()),
            moved: Condvar::new(),
            feed: watch::Sender::new(Heard::default()),
        });
        let weak = Arc::downgrade(&changes);
        std::thread::spawn(move || keep_listening(&weak, connect));
        changes
    }

    /// What was heard so far.
    pub(super) fn now(&self) -> Heard {
        self.heard
            .lock()
            .map(|hearing| hearing.heard)
            .unwrap_or_default()
    }

    /// How many changes of account `id` were heard so far.
    pub(super) fn account_changes(&self, id: i64) -> u64 {
        self.heard
            .lock()
            .map(|hearing| hearing.accounts.get(&id).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    /// The ids of the accounts heard of since the last call (an account removed among them).
    pub(super) fn take_changed_accounts(&self) -> Vec<i64> {
        self.heard
            .lock()
            .map(|mut hearing| hearing.changed.drain().collect())
            .unwrap_or_default()
    }

    /// Waits up to `wait` for account `id` to change after `seen` changes; false when nothing
    /// is heard (the caller then polls).
    pub(super) fn wait_for_account(&self, id: i64, seen: u64, wait: Duration) -> bool {
        let Ok(hearing) = self.heard.lock() else {
            return false;
        };
        if !hearing.heard.listening {
            return false;
        }
        let _ = self.moved.wait_timeout_while(hearing, wait, |now| {
            now.heard.listening && now.accounts.get(&id).copied().unwrap_or_default() == seen
        });
        true
    }

    /// Waits up to `wait` for `done` to hold of what was heard.
    pub(super) fn wait_until(&self, wait: Duration, done: impl Fn(&Heard) -> bool) -> bool {
        let Ok(hearing) = self.heard.lock() else {
            return false;
        };
        self.moved
            .wait_timeout_while(hearing, wait, |now| !done(&now.heard))
            .is_ok_and(|(now, _)| done(&now.heard))
    }

    pub(super) fn feed(&self) -> ChangeFeed {
        let heard = self.feed.subscribe();
        let seen = *heard.borrow();
        ChangeFeed { heard, seen }
    }

    fn update(&self, change: impl FnOnce(&mut Hearing)) {
        if let Ok(mut hearing) = self.heard.lock() {
            change(&mut hearing);
            self.feed.send_replace(hearing.heard);
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
            // Anything may have changed while nobody listened: everyone looks once, in full.
            let heard = update(changes, |hearing| {
                hearing.heard.listening = true;
                hearing.heard.data += 1;
                hearing.heard.alerts += 1;
                hearing.changed.clear();
            });
            while heard && hear(&mut client, changes) {}
            if !update(changes, |hearing| hearing.heard.listening = false) {
                return;
            }
        }
        std::thread::sleep(RECONNECT_AFTER);
    }
}

/// Takes in what arrives within `ALIVE_CHECK`, with whatever came along with it; false once the
/// connection is gone or nobody is interested any more. The connection is checked (a round trip)
/// only after a quiet `ALIVE_CHECK`: a busy fleet's notifications show it is alive.
fn hear(client: &mut postgres::Client, changes: &Weak<Changes>) -> bool {
    use postgres::fallible_iterator::FallibleIterator;
    let mut news = Vec::new();
    {
        let mut notifications = client.notifications();
        match notifications.timeout_iter(ALIVE_CHECK).next() {
            Ok(Some(first)) => news.push(News::of(first.payload())),
            Ok(None) => {}
            Err(_) => return false,
        }
        if !news.is_empty() {
            let mut buffered = notifications.iter();
            while let Ok(Some(more)) = buffered.next() {
                news.push(News::of(more.payload()));
            }
        }
    }
    if !news.is_empty() {
        return update(changes, |hearing| hearing.take_in(news)) && !client.is_closed();
    }
    !client.is_closed() && client.is_valid(ALIVE_CHECK).is_ok() && changes.strong_count() > 0
}

impl Hearing {
    fn take_in(&mut self, news: Vec<News>) {
        for item in news {
            match item {
                News::Account(id) => {
                    *self.accounts.entry(id).or_default() += 1;
                    self.changed.insert(id);
                    self.heard.accounts += 1;
                }
                News::Data => self.heard.data += 1,
                News::Alerts => self.heard.alerts += 1,
            }
        }
        // Anyone who can connect to the database can send notifications: a flood of made-up
        // ids must not grow this host's memory. Past the bound, what was heard per account is
        // forgotten (a waiter wakes and looks) and everyone looks at the whole fleet.
        if self.accounts.len() > MAX_ACCOUNTS_HEARD || self.changed.len() > MAX_ACCOUNTS_HEARD {
            self.accounts.clear();
            self.changed.clear();
            self.heard.data += 1;
        }
    }
}

fn update(changes: &Weak<Changes>, change: impl FnOnce(&mut Hearing)) -> bool {
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
    /// What was heard when `next` last returned.
    pub fn seen(&self) -> Heard {
        self.seen
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_made_up_account_ids_is_forgotten_and_makes_everyone_look() {
        let mut hearing = Hearing::default();
        hearing.take_in(vec![News::Account(1), News::Account(1), News::Data]);
        assert_eq!(hearing.accounts.get(&1), Some(&2));
        assert_eq!((hearing.heard.accounts, hearing.heard.data), (2, 1));
        let flood = (0..=MAX_ACCOUNTS_HEARD as i64).map(News::Account).collect();
        hearing.take_in(flood);
        assert!(hearing.accounts.is_empty() && hearing.changed.is_empty());
        assert_eq!(hearing.heard.data, 2, "a full look instead");
    }
}
