//! Scheduled validation: on a cron schedule (global, or the account's own), a live refresh proves
//! that each long-lived credential still works, so a revocation is found then — and alerted —
//! not when an app needs a token. It also keeps Google refresh tokens from expiring unused.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::account::AccountState;
use crate::clock::now_unix;
use crate::refresh::Need;
use crate::scheduler::jitter;
use crate::server::tokens::Tokens;

const TICK: Duration = Duration::from_secs(1);
/// Validations of one firing are spread over at most this long (or half the gap to the next
/// firing), so that 10,000 accounts are not all proven in the same second.
const MAX_SPREAD: i64 = 300;

/// The next time a schedule fires, and the window its validations are spread over.
#[derive(Clone, Copy)]
struct Firing {
    at: i64,
    window: i64,
}

impl Firing {
    fn of(schedule: &cron::Schedule, now: i64) -> Firing {
        let at = next_after(schedule, now);
        let following = next_after(schedule, at);
        Firing {
            at,
            window: ((following.saturating_sub(at)) / 2).min(MAX_SPREAD),
        }
    }

    fn for_account(self, account: &str) -> i64 {
        self.at.saturating_add(jitter(account, self.window))
    }
}

pub async fn run(tokens: Arc<Tokens>, global: cron::Schedule) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let now = now_unix();
        let global_firing = Firing::of(&global, now);
        tokens.for_each_slot(|name, slot| {
            // A dead grant stays dead until `vault login`; asking again cannot help.
            if slot.state() == AccountState::ReauthRequired {
                return;
            }
            let next = || {
                slot.validation_schedule()
                    .map_or(global_firing, |own| Firing::of(own, now))
                    .for_account(name)
            };
            match slot.times().next_validation {
                None => slot.set_next_validation(next()),
                Some(due) if now >= due => {
                    slot.set_next_validation(next());
                    tokens.spawn_background(name, slot, Need::Fresh { validation: true });
                }
                Some(_) => {}
            }
        });
    }
}

/// When account `name` is next validated on `schedule` (what the daemon will do, for `vault status`).
pub fn next_validation(schedule: &cron::Schedule, name: &str, now: i64) -> i64 {
    Firing::of(schedule, now).for_account(name)
}

/// The first time the schedule fires after `now` (never, for a schedule with no future time).
fn next_after(schedule: &cron::Schedule, now: i64) -> i64 {
    DateTime::<Utc>::from_timestamp(now, 0)
        .and_then(|now| schedule.after(&now).next())
        .map_or(i64::MAX, |next| next.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_time_of_a_schedule_and_its_spread() {
        let every_six_hours = crate::config::parse_schedule("0 0 */6 * * *").unwrap();
        // 2026-11-24T13:00:00Z → 18:00:00Z, spread over 5 minutes.
        let firing = Firing::of(&every_six_hours, 1_795_957_200);
        assert_eq!((firing.at, firing.window), (1_795_975_200, 300));
        let every_two_seconds = crate::config::parse_schedule("*/2 * * * * *").unwrap();
        assert_eq!(Firing::of(&every_two_seconds, 1_795_957_200).window, 1);
    }
}
