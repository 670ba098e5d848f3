//! Picks up what other `vault` processes changed (accounts added or removed, logins, grants,
//! schedules, refreshes made by `vault token` without the daemon): the store's data version is
//! compared, and the account table rebuilt only when it moved. The embedded vault is looked at
//! every few seconds. A fleet daemon reloads just the accounts the database says changed (within
//! a quarter second: the other hosts then find a new token instead of trying to refresh it), and
//! looks at the whole vault when grants change (at most every few seconds) and every half minute
//! anyway — or every few seconds while it cannot hear the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tokens::Tokens;
use crate::store::Heard;

/// How often the daemon looks at the whole vault for changes made by other `vault` processes,
/// at most.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// How long a fleet daemon that hears changes goes without looking at the whole vault anyway.
const HEARD_QUIET: Duration = Duration::from_secs(30);
/// How soon a fleet daemon reloads the accounts it heard another host change: soon enough that
/// the hosts after the first find an account's new token before they would refresh it
/// themselves, seldom enough to take a busy fleet's news in batches.
const RENEW_EVERY: Duration = Duration::from_millis(250);

pub async fn run(tokens: Arc<Tokens>) {
    let Some(mut feed) = tokens.change_feed() else {
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            tokens.reload_if_changed().await;
        }
    };
    let mut looked_at = Instant::now();
    let mut look_due = false;
    loop {
        let before = feed.seen();
        let quiet = match look_due {
            true => RELOAD_EVERY.saturating_sub(looked_at.elapsed()),
            false => HEARD_QUIET,
        };
        feed.next(
            |heard: &Heard| heard.data + heard.accounts,
            quiet,
            RELOAD_EVERY,
        )
        .await;
        let now = feed.seen();
        // A failed renewal spent the ids it heard: a full look (within seconds, not at the next
        // half minute) finds what they changed.
        let renewed = tokens.reload_heard().await;
        look_due |= !renewed
            || now.data != before.data
            || !now.listening
            || looked_at.elapsed() >= HEARD_QUIET;
        if look_due && looked_at.elapsed() >= RELOAD_EVERY {
            tokens.reload_if_changed().await;
            looked_at = Instant::now();
            look_due = false;
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}
