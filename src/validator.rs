//! Scheduled validation: on a cron schedule (global, or the account's own), a live refresh proves
//! that each long-lived credential still works, so a revocation is found then — and alerted —
//! not when an app needs a token. It also keeps Google refresh tokens from expiring unused.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::account::AccountState;
use crate::clock::now_unix;
use crate::refresh::Need;
use crate::server::tokens::Tokens;

const TICK: Duration = Duration::from_secs(1);

pub async fn run(tokens: Arc<Tokens>, global: cron::Schedule) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let now = now_unix();
        for (name, slot) in tokens.slots() {
            // A dead grant stays dead until `vault login`; asking again cannot help.
            if slot.state() == AccountState::ReauthRequired {
                continue;
            }
            let schedule = slot.validation_schedule().unwrap_or(&global);
            match slot.times().next_validation {
                None => slot.set_next_validation(next_after(schedule, now)),
                Some(due) if now >= due => {
                    slot.set_next_validation(next_after(schedule, now));
                    tokens.spawn_background(name, slot, Need::Fresh { validation: true });
                }
                Some(_) => {}
            }
        }
    }
}

/// The first time the schedule fires after `now` (never, for a schedule with no future time).
pub fn next_after(schedule: &cron::Schedule, now: i64) -> i64 {
    DateTime::<Utc>::from_timestamp(now, 0)
        .and_then(|now| schedule.after(&now).next())
        .map_or(i64::MAX, |next| next.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_time_of_a_schedule() {
        let every_six_hours = crate::config::parse_schedule("0 0 */6 * * *").unwrap();
        // 2026-11-24T13:00:00Z → 18:00:00Z
        assert_eq!(next_after(&every_six_hours, 1_795_957_200), 1_795_975_200);
    }
}
