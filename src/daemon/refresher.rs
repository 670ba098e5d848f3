//! Refresh ahead: every active account's access token is refreshed before it expires (see
//! `timing::refresh_due`), so that apps asking between refreshes never wait on the provider.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_unix;
use crate::daemon::tokens::Tokens;
use crate::refresh::Need;
use crate::timing;

/// Due times are read from the wall clock every tick, so a machine resuming from suspend
/// refreshes at once what expired while it slept.
const TICK: Duration = Duration::from_secs(1);

/// `host`: this host's name in a fleet, which spreads the hosts' refreshes of one account.
pub async fn run(tokens: Arc<Tokens>, refresh_before: Option<u64>, host: Option<String>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let now = now_unix();
        tokens.table().for_each(|slot| {
            if !slot.state().may_refresh_ahead() {
                return;
            }
            let times = slot.times();
            let (Some(issued_at), Some(expires_at)) = (times.issued_at, times.expires_at) else {
                return;
            };
            let before = slot.refresh_before().or(refresh_before);
            let due = timing::refresh_due(
                slot.name(),
                host.as_deref(),
                (issued_at, expires_at),
                before,
            );
            if now >= due {
                tokens.spawn_background(
                    slot,
                    Need::Ahead {
                        replacing: expires_at,
                    },
                );
            }
        });
    }
}
