//! A fleet's alerts, once per fleet: each daemon looks at the database's alert outbox when an
//! alert row is written (every ten seconds anyway, for the `degraded` alerts that fall due with
//! time; every second while it cannot hear the database's notifications), writes the `degraded`
//! alerts that are due, and delivers the alerts no other host is delivering through its own
//! sinks (store::postgres::outbox). Every ten seconds it also tells the fleet it is alive
//! (`vault fleet status`).

use std::sync::Arc;
use std::time::Duration;

use crate::daemon::tokens::Tokens;
use crate::store::Heard;

/// Alerts reach their sinks within about this long of the change that called for them when
/// the daemon cannot hear the database's notifications.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How often it looks anyway, and tells the fleet it is alive.
const QUIET: Duration = Duration::from_secs(10);

pub async fn run(tokens: Arc<Tokens>, degraded_after: u64) {
    let mut feed = tokens.change_feed();
    let mut last_heartbeat: Option<tokio::time::Instant> = None;
    loop {
        if last_heartbeat.is_none_or(|at| at.elapsed() >= QUIET) {
            tokens.heartbeat().await;
            last_heartbeat = Some(tokio::time::Instant::now());
        }
        tokens.deliver_outbox(degraded_after).await;
        match &mut feed {
            Some(feed) => {
                feed.next(|heard: &Heard| heard.alerts, QUIET, POLL_EVERY)
                    .await
            }
            None => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}
