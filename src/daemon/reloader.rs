//! Picks up what other `vault` processes changed (accounts added or removed, logins, grants,
//! schedules, refreshes made by `vault token` without the daemon): the store's data version is
//! compared every few seconds, and the account table rebuilt only when it moved.

use std::sync::Arc;
use std::time::Duration;

use super::tokens::Tokens;

/// How often the daemon looks for changes made by other `vault` processes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

pub async fn run(tokens: Arc<Tokens>) {
    let mut every = tokio::time::interval(RELOAD_EVERY);
    loop {
        every.tick().await;
        tokens.reload_if_changed().await;
    }
}
