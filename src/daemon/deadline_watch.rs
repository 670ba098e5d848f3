//! Refresh tokens with a deadline of their own: a Google app in "Testing" status gets refresh
//! tokens that die after 7 days, and time-bound access ends on a date; the answers announce it
//! (`refresh_token_expires_in`). No refresh can extend it, so the user is told a configurable time
//! before (`alert.expiring_before_seconds`, default a day), once per deadline.

use std::sync::Arc;
use std::time::Duration;

use crate::daemon::tokens::Tokens;

/// Deadlines are days away; a minute's delay in noticing one costs nothing.
const CHECK_EVERY: Duration = Duration::from_secs(60);

pub async fn run(tokens: Arc<Tokens>, before: u64) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        tokens.alert_refresh_deadlines(before).await;
    }
}
