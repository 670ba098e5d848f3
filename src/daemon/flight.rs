//! The refresh coordinator: however many callers ask for an account at once, one refresh runs
//! and every caller waiting for it takes its result; after a transient failure the account is
//! paused (exponential backoff, at least the provider's Retry-After) and callers get the cached
//! token or the last failure.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::table::{CachedToken, Slot};
use crate::clock::now_unix;
use crate::error::{Error, Problem};
use crate::refresh::Need;
use crate::store::StoreError;
use crate::timing;

/// A token issued less than this many seconds ago is not refreshed again because a caller asked
/// for more validity than it has: a `min_valid` beyond the token's lifetime can never be met, and
/// must not turn every request into an upstream call (and every call into a rotation). The
/// freshest token is answered instead. Background refreshes and validations are not bound.
const ON_DEMAND_SPACING: i64 = 30;

/// The `Retry-After` of a `store_unavailable` answer: the daemon reconnects to a fleet database
/// within a second or two of its return, and a busy store frees up sooner.
const STORE_RETRY_AFTER: i64 = 5;

/// Why a token could not be given; the edge turns the problem into a status and a code.
#[derive(Clone, Debug)]
pub struct Failure {
    pub problem: Problem,
    pub message: String,
    pub retry_after: Option<i64>,
}

impl Failure {
    pub fn internal(message: &str) -> Failure {
        Failure {
            problem: Problem::Internal,
            message: message.to_owned(),
            retry_after: None,
        }
    }

    /// The caller waited as long as it may for a refresh that goes on.
    pub fn still_running(account: &str) -> Failure {
        Failure {
            problem: Problem::StoreUnavailable,
            message: format!(
                "the refresh of account {account:?} is still under way (its commit waits for the fleet's database, or the provider is slow); it goes on: ask again in a few seconds"
            ),
            retry_after: Some(STORE_RETRY_AFTER),
        }
    }

    fn from_error(error: &Error, retry_after: Option<i64>) -> Failure {
        let problem = error.problem();
        let retry_after = match problem {
            Problem::UpstreamUnavailable => retry_after,
            Problem::StoreUnavailable => Some(STORE_RETRY_AFTER),
            _ => None,
        };
        Failure {
            problem,
            message: error.to_string(),
            retry_after,
        }
    }
}

/// A refresh's result: the token, and why it is the cached one when the provider failed.
pub type Refreshed = Result<(Arc<CachedToken>, Option<String>), Error>;

/// One account's single flight.
#[derive(Default)]
pub struct Flight {
    /// Bumped after every refresh: a waiter that sees it move takes that refresh's result.
    refreshes: AtomicU64,
    last: tokio::sync::Mutex<LastRefresh>,
}

/// What the last refresh of an account ended with, shared with everyone who waited for it.
#[derive(Default)]
struct LastRefresh {
    /// How it ended (its token is in the slot's cache); the failure boxed: most accounts never
    /// fail, and every account has one of these.
    result: Option<Result<(), Box<Failure>>>,
    /// Transient failures in a row, for the backoff.
    failures: u32,
    /// No upstream call before this time (backoff after a transient failure).
    pause_until: i64,
}

/// The token `need` takes from the cache, with no waiting: none for a dead grant (whose answer
/// is the failure) or when a refresh is needed.
pub fn from_memory(slot: &Slot, need: Need) -> Option<Arc<CachedToken>> {
    match need {
        Need::Valid { min_valid } if !slot.state().refuses_at_once() => slot.cached(min_valid),
        _ => None,
    }
}

/// A token for `slot` as `need` says: from memory when possible, else from exactly one run of
/// `refresh` however many callers ask at once.
pub async fn obtain<F, R>(
    slot: &Slot,
    need: Need,
    max_backoff: u64,
    refresh: F,
) -> Result<Arc<CachedToken>, Failure>
where
    F: FnOnce() -> R,
    R: Future<Output = Refreshed>,
{
    let flight = &slot.flight;
    if slot.state().refuses_at_once() {
        return Err(dead_grant(slot.name(), &*flight.last.lock().await));
    }
    if let Some(token) = from_memory(slot, need) {
        return Ok(token);
    }
    let seen = flight.refreshes.load(Ordering::Acquire);
    let mut last = flight.last.lock().await;
    if flight.refreshes.load(Ordering::Acquire) != seen {
        // A refresh finished while this caller waited: its result is the answer.
        match &last.result {
            Some(Err(failure)) => return Err((**failure).clone()),
            Some(Ok(())) => {
                if let Some(token) = slot.cached(1) {
                    return Ok(token);
                }
            }
            None => {}
        }
    }
    let now = now_unix();
    if now < last.pause_until {
        return slot.cached(1).ok_or_else(|| paused_failure(&last, now));
    }
    let just_issued = slot
        .times()
        .issued_at
        .is_some_and(|at| now.saturating_sub(at) < ON_DEMAND_SPACING);
    if matches!(need, Need::Valid { .. })
        && just_issued
        && let Some(token) = slot.cached(1)
    {
        // The freshest token there is, though shorter-lived than asked for.
        return Ok(token);
    }
    let result = refresh().await;
    last.back_off_after(&result, max_backoff);
    let retry_after = Some(last.pause_until - now_unix()).filter(|pause| *pause > 0);
    let shared = result
        .map(|(token, _)| token)
        .map_err(|error| Failure::from_error(&error, retry_after));
    last.result = Some(
        shared
            .as_ref()
            .map(|_| ())
            .map_err(|failure| Box::new(failure.clone())),
    );
    flight.refreshes.fetch_add(1, Ordering::Release);
    shared
}

impl LastRefresh {
    /// A transient failure (or a cached token served because of one) pauses the account;
    /// anything else ends the pause.
    fn back_off_after(&mut self, result: &Refreshed, max_backoff: u64) {
        // The fleet paused the account after another host's failure: wait exactly that long;
        // another host holds the lease: look again in a second. This daemon has not failed,
        // so its own backoff does not grow.
        let fleet_wait = match result {
            Err(Error::Store(StoreError::Paused { seconds, .. })) => Some(*seconds),
            Err(Error::Store(StoreError::LeaseHeld(_))) => Some(1),
            _ => None,
        };
        if let Some(seconds) = fleet_wait {
            let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
            self.pause_until = now_unix().saturating_add(seconds);
            return;
        }
        let transient = match result {
            Ok((_, problem)) => problem.as_ref().map(|_| None),
            Err(Error::Unavailable { retry_after, .. }) => Some(*retry_after),
            Err(_) => None,
        };
        let Some(retry_after) = transient else {
            self.failures = 0;
            return;
        };
        self.failures += 1;
        let random =
            crate::crypto::random_bytes::<4>().map_or(0, |b| u32::from_le_bytes(*b.expose()));
        let pause = timing::backoff(self.failures, retry_after, max_backoff, random);
        self.pause_until = now_unix() + pause;
    }
}

/// The answer for an account whose grant is dead: the refresh's own message when this daemon
/// found it, else the fix.
fn dead_grant(name: &str, last: &LastRefresh) -> Failure {
    match &last.result {
        Some(Err(failure)) if failure.problem == Problem::ReauthRequired => (**failure).clone(),
        _ => Failure {
            problem: Problem::ReauthRequired,
            message: format!("account {name:?} must be authorized again. Next: vault login {name}"),
            retry_after: None,
        },
    }
}

fn paused_failure(last: &LastRefresh, now: i64) -> Failure {
    let retry_after = Some((last.pause_until - now).max(1));
    match &last.result {
        Some(Err(failure)) => Failure {
            retry_after,
            ..(**failure).clone()
        },
        _ => Failure {
            problem: Problem::UpstreamUnavailable,
            message: "the provider was unavailable a moment ago and no valid token is cached; try again shortly".into(),
            retry_after,
        },
    }
}
