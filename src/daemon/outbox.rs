//! A fleet's alerts, once per fleet: each daemon looks at the database's alert outbox every
//! second, writes the `degraded` alerts that are due, and delivers the alerts no other host is
//! delivering through its own sinks (store::postgres::outbox). Every ten seconds it also tells
//! the fleet it is alive (`vault fleet status`).

use std::sync::Arc;
use std::time::Duration;

use crate::daemon::tokens::Tokens;

/// Alerts reach their sinks within about this long of the change that called for them.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Heartbeats, in outbox looks.
const HEARTBEAT_EVERY: u32 = 10;

pub async fn run(tokens: Arc<Tokens>, degraded_after: u64) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    let mut look: u32 = 0;
    loop {
        tick.tick().await;
        if look.is_multiple_of(HEARTBEAT_EVERY) {
            tokens.heartbeat().await;
        }
        look = look.wrapping_add(1);
        tokens.deliver_outbox(degraded_after).await;
    }
}
