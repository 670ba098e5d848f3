//! Scheduled key rotation (`vault schedule NAME --rotate-every 90d`): the daemon rotates an
//! account's own key (a Google service-account key, a Microsoft client secret) once it is that
//! old, and finishes any rotation a crash left half-way. A rotation that fails keeps the key in
//! use, is alerted once per due date — `aging` when the provider does not let the vault rotate
//! the key (the reason names what to grant), `rotation_failed` otherwise — and is tried again an
//! hour later. On a fleet every daemon looks; the first to take the account's rotation rotates,
//! and a failure is alerted once for the fleet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_unix;
use crate::daemon::tokens::Tokens;
use crate::error::Error;
use crate::store::StoreError;

/// Keys age in days; a minute's delay in noticing one costs nothing.
const CHECK_EVERY: Duration = Duration::from_secs(60);
/// After a failed rotation: soon enough to recover from an outage the same day, rarely enough
/// not to make keys (Google allows 10 per service account) or hammer an API that refuses.
const RETRY_AFTER: i64 = 3600;

pub async fn run(tokens: Arc<Tokens>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    let mut retry_at: HashMap<String, i64> = HashMap::new();
    loop {
        tick.tick().await;
        let Some(candidates) = tokens.rotation_candidates().await else {
            continue;
        };
        let now = now_unix();
        for account in candidates {
            let ready = account.unfinished || account.due_at.is_some_and(|at| at <= now);
            let waiting = retry_at.get(&account.name).is_some_and(|&at| at > now);
            if !ready || waiting {
                continue;
            }
            match tokens.rotate_key(&account.name).await {
                Ok(()) => {
                    retry_at.remove(&account.name);
                }
                // Another host of the fleet (or a `vault rotate`) is at it: its outcome counts.
                Err(Error::Store(StoreError::RotationUnderWay(_))) => {}
                Err(error) => {
                    retry_at.insert(account.name.clone(), now + RETRY_AFTER);
                    tokens
                        .key_not_rotated(&account.name, account.due_at, &error)
                        .await;
                }
            }
        }
    }
}
