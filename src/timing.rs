//! When to call the provider: refresh-ahead timing with jitter, backoff after transient
//! failures, and validation firings. Used by the daemon's duties and by `vault status`. Pure functions of wall-clock seconds, so that a machine resuming from suspend sees
//! at once what fell due while it slept.

use chrono::{DateTime, Utc};

/// Never refresh earlier than this before expiry unless the token lives shorter.
const MIN_REFRESH_BEFORE: i64 = 60;
/// First pause after a transient failure; doubles with each further failure.
const BACKOFF_BASE: i64 = 5;

/// How long before expiry a token is refreshed: max(60 s, 10 % of its lifetime), or the configured
/// value, never more than half the lifetime, so that short-lived tokens are not refreshed on
/// every ask.
pub fn refresh_before(lifetime: i64, configured: Option<u64>) -> i64 {
    let wanted = configured.map_or((lifetime / 10).max(MIN_REFRESH_BEFORE), |seconds| {
        seconds as i64
    });
    wanted.min(lifetime / 2).max(0)
}

/// A stable per-account offset in `0..window`, so that accounts whose tokens expire together
/// (10,000 added in one go) spread their refreshes over the window instead of one second.
pub fn jitter(account: &str, window: i64) -> i64 {
    if window <= 0 {
        return 0;
    }
    (crate::account::name_hash(account) % window as u64) as i64
}

/// How far apart a fleet's hosts come due for one account's refresh, at most: enough for the
/// first one's new token to reach the others (a notification, a reload) before they would
/// refresh, little enough not to shorten a token's use noticeably.
const HOST_SPREAD: i64 = 5;

/// When to refresh a token of `account` issued at `issued_at` that expires at `expires_at`:
/// `refresh_before` ahead of expiry, and earlier by a jitter of up to half of that; on a fleet
/// (`host`), earlier again by up to `HOST_SPREAD` seconds drawn from the host, so the hosts come
/// due one after another.
pub fn refresh_due(
    account: &str,
    host: Option<&str>,
    (issued_at, expires_at): (i64, i64),
    configured: Option<u64>,
) -> i64 {
    let before = refresh_before(expires_at - issued_at, configured);
    let host_offset = host.map_or(0, |host| {
        let window = HOST_SPREAD.min(before / 4);
        if window <= 0 {
            return 0;
        }
        ((crate::account::name_hash(host) ^ crate::account::name_hash(account)) % window as u64)
            as i64
    });
    expires_at - before - jitter(account, before / 2) - host_offset
}

/// The pause after the `failures`-th transient failure in a row: exponential from 5 s, capped,
/// with jitter (50–100 %) so that many accounts do not retry in step; never shorter than the
/// provider's `Retry-After`, which is itself capped: an absurd one must not silence an account
/// for years.
pub fn backoff(failures: u32, retry_after: Option<u64>, cap: u64, random: u32) -> i64 {
    let cap = i64::try_from(cap).unwrap_or(i64::MAX);
    let exponent = failures.saturating_sub(1).min(20);
    let full = BACKOFF_BASE.saturating_mul(1 << exponent).min(cap).max(1);
    let jittered = full / 2 + (i64::from(random) % (full / 2 + 1));
    let asked = retry_after.map_or(0, |seconds| i64::try_from(seconds).unwrap_or(i64::MAX));
    jittered.max(asked.min(cap))
}

/// Validations of one firing are spread over at most this long (or half the gap to the next
/// firing), so that 10,000 accounts are not all proven in the same second.
const MAX_SPREAD: i64 = 300;

/// The next time a schedule fires, and the window its validations are spread over.
#[derive(Clone, Copy)]
pub struct Firing {
    at: i64,
    window: i64,
}

impl Firing {
    pub fn of(schedule: &cron::Schedule, now: i64) -> Firing {
        let at = next_after(schedule, now);
        let following = next_after(schedule, at);
        Firing {
            at,
            window: ((following.saturating_sub(at)) / 2).min(MAX_SPREAD),
        }
    }

    pub fn for_account(self, account: &str) -> i64 {
        self.at.saturating_add(jitter(account, self.window))
    }
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
    fn refresh_before_follows_the_lifetime() {
        assert_eq!(refresh_before(3600, None), 360);
        assert_eq!(refresh_before(300, None), 60);
        assert_eq!(refresh_before(5, None), 2, "capped at half the lifetime");
        assert_eq!(refresh_before(3600, Some(120)), 120);
        assert_eq!(refresh_before(100, Some(120)), 50);
    }

    #[test]
    fn ten_thousand_equal_tokens_spread_over_the_window() {
        let (issued, expires) = (1_000_000, 1_000_600);
        let mut per_second = std::collections::HashMap::<i64, u32>::new();
        for i in 0..10_000 {
            let due = refresh_due(&format!("account-{i:05}"), None, (issued, expires), None);
            assert!(due <= expires - 60 && due > expires - 60 - 30, "{due}");
            *per_second.entry(due).or_default() += 1;
        }
        let seconds = per_second.len() as f64;
        let mean = 10_000.0 / seconds;
        let max = *per_second.values().max().unwrap() as f64;
        assert!(seconds >= 29.0, "spread over the window: {seconds} s");
        assert!(max <= 2.0 * mean, "max {max} per second vs mean {mean}");
    }

    #[test]
    fn a_fleets_hosts_come_due_within_a_few_seconds_of_each_other() {
        let alone = refresh_due("mail", None, (0, 3600), None);
        let dues: Vec<i64> = (0..20)
            .map(|n| refresh_due("mail", Some(&format!("host-{n}")), (0, 3600), None))
            .collect();
        assert!(
            dues.iter()
                .all(|due| (alone - HOST_SPREAD..=alone).contains(due))
        );
        assert!(dues.iter().any(|due| *due != dues[0]), "{dues:?}");
        // A token too short to spread over is not spread.
        assert_eq!(
            refresh_due("mail", Some("host-1"), (0, 8), None),
            refresh_due("mail", None, (0, 8), None)
        );
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        assert!((3..=5).contains(&backoff(1, None, 900, 7)));
        assert!((20..=40).contains(&backoff(4, None, 900, 7)));
        assert!((450..=900).contains(&backoff(30, None, 900, 12345)));
        assert_eq!(backoff(1, Some(120), 900, 0), 120);
        assert_eq!(
            backoff(1, Some(u64::MAX), 900, 0),
            900,
            "Retry-After is capped"
        );
        assert!(backoff(3, None, u64::MAX, 0) > 0);
    }

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
