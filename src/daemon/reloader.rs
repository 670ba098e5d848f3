//! Picks up what other `vault` processes changed (accounts added or removed, logins, grants,
//! schedules, refreshes made by `vault token` without the daemon): the store's data version is
//! compared, and the account table rebuilt only when it moved. The embedded vault is looked at
//! every few seconds; a fleet daemon looks when the database says something changed (at most
//! as often, and every half minute anyway), or every few seconds while it cannot hear that.

use std::sync::Arc;
use std::time::Duration;

use super::tokens::Tokens;
use crate::store::Heard;

/// How often the daemon looks for changes made by other `vault` processes, at most.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// How long a fleet daemon that hears changes goes without looking anyway.
const HEARD_QUIET: Duration = Duration::from_secs(30);

pub async fn run(tokens: Arc<Tokens>) {
    let mut feed = tokens.change_feed();
    loop {
        match &mut feed {
            Some(feed) => {
                feed.next(|heard: &Heard| heard.data, HEARD_QUIET, RELOAD_EVERY)
                    .await
            }
            None => tokio::time::sleep(RELOAD_EVERY).await,
        }
        tokens.reload_if_changed().await;
        if feed.is_some() {
            // A busy fleet changes all the time: one look per period is enough.
            tokio::time::sleep(RELOAD_EVERY).await;
        }
    }
}
