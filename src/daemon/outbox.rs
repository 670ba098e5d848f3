//! A fleet's alerts, once per fleet: each daemon looks at the database's alert outbox every
//! second, writes the `degraded` alerts that are due, and delivers the alerts no other host is
//! delivering through its own sinks (store::postgres::outbox).

use std::sync::Arc;
use std::time::Duration;

use crate::daemon::tokens::Tokens;

/// Alerts reach their sinks within about this long of the change that called for them.
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub async fn run(tokens: Arc<Tokens>, degraded_after: u64) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    loop {
        tick.tick().await;
        tokens.deliver_outbox(degraded_after).await;
    }
}
