//! Credentials with a deadline of their own. A Google app in "Testing" status gets refresh tokens
//! that die after 7 days, and time-bound access ends on a date; the answers announce it
//! (`refresh_token_expires_in`). Microsoft client secrets expire on the date their owner chose
//! (recorded with `vault set-client-secret --expires`). No refresh can extend either, so the user is
//! told a configurable time before (`alert.expiring_before_seconds`, default a day;
//! `alert.client_secret_expiring_before_seconds`, default two weeks), once per deadline.

use std::sync::Arc;
use std::time::Duration;

use crate::account::Deadline;
use crate::daemon::tokens::Tokens;

/// Deadlines are days away; a minute's delay in noticing one costs nothing.
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// How long before each kind of deadline the user is told.
pub struct Warnings {
    pub refresh_token: u64,
    pub client_secret: u64,
}

pub async fn run(tokens: Arc<Tokens>, before: Warnings) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        for &deadline in Deadline::ALL {
            let warning = match deadline {
                Deadline::RefreshToken => before.refresh_token,
                Deadline::ClientSecret => before.client_secret,
            };
            tokens.alert_deadlines(deadline, warning).await;
        }
    }
}
