//! The daemon's accounts: who may read them, their cached access tokens, their refresh timing,
//! and single-flight refreshes. A valid cached token is answered from memory without touching
//! the store, the provider, or any lock held across I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::events::{Events, Happened};
use super::metrics::{Metrics, Snapshot};
use crate::account::{AccountState, AccountSummary, Principal};
use crate::clock::now_unix;
use crate::daemon::alert::{Alerts, Change};
use crate::daemon::audit::{Audit, Record};
use crate::error::{Error, Problem};
use crate::refresh::{self, Need, Plan};
use crate::secret::SecretString;
use crate::store::Store;
use crate::timing;

/// An access token held in memory, ready to answer.
pub struct CachedToken {
    pub access_token: SecretString,
    pub expires_at: i64,
    pub scope: String,
}

/// Why a token could not be given; the edge turns the problem into a status and a code.
#[derive(Clone, Debug)]
pub struct Failure {
    pub problem: Problem,
    pub message: String,
    pub retry_after: Option<i64>,
}

impl Failure {
    fn from_error(error: &Error, retry_after: Option<i64>) -> Failure {
        let problem = error.problem();
        Failure {
            problem,
            message: error.to_string(),
            retry_after: retry_after.filter(|_| problem == Problem::UpstreamUnavailable),
        }
    }
}

/// What the last refresh of an account ended with, shared with everyone who waited for it.
#[derive(Default)]
struct Flight {
    last: Option<Result<Arc<CachedToken>, Failure>>,
    /// Transient failures in a row, for the backoff.
    failures: u32,
    /// No upstream call before this time (backoff after a transient failure).
    pause_until: i64,
}

/// A token issued less than this many seconds ago is not refreshed again because a caller asked
/// for more validity than it has: a `min_valid` beyond the token's lifetime can never be met, and
/// must not turn every request into an upstream call (and every call into a rotation). The
/// freshest token is answered instead. Background refreshes and validations are not bound.
const ON_DEMAND_SPACING: i64 = 30;

/// When the account's token was issued and expires, and when it is next validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct Times {
    pub issued_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub next_validation: Option<i64>,
}

pub struct Slot {
    state: Mutex<AccountState>,
    grants: Vec<Principal>,
    /// The configured scopes, answered when the provider did not name the granted ones.
    scope: String,
    /// Boxed: most accounts have none, and an inline schedule would triple the slot's size.
    validation_schedule: Option<Box<cron::Schedule>>,
    /// The account's own schedule as stored, to notice when it changes.
    schedule_text: Option<String>,
    refresh_before: Option<u64>,
    cache: Mutex<Option<Arc<CachedToken>>>,
    times: Mutex<Times>,
    /// Bumped after every refresh: a waiter that sees it move takes that refresh's result.
    refreshes: AtomicU64,
    /// A background refresh (ahead of expiry, or validation) is running.
    busy: AtomicBool,
    flight: tokio::sync::Mutex<Flight>,
}

impl Slot {
    fn new(account: AccountSummary, grants: Vec<Principal>) -> Slot {
        Slot {
            state: Mutex::new(account.state),
            grants,
            scope: account.scope,
            validation_schedule: account
                .validation_schedule
                .as_deref()
                .and_then(|text| crate::config::parse_schedule(text).ok())
                .map(Box::new),
            schedule_text: account.validation_schedule.clone(),
            refresh_before: account.refresh_before,
            cache: Mutex::new(None),
            times: Mutex::new(Times {
                issued_at: account.last_refresh_at,
                expires_at: account.access_expires_at,
                next_validation: None,
            }),
            refreshes: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            flight: tokio::sync::Mutex::new(Flight::default()),
        }
    }

    /// Whether this slot still describes `account` as the store has it: no other process has
    /// changed its state, its token, its schedule or its grants since.
    fn matches(&self, account: &AccountSummary, grants: &[Principal]) -> bool {
        let token_same = self.times().expires_at == account.access_expires_at;
        self.state() == account.state
            && token_same
            && self.schedule_text == account.validation_schedule
            && self.refresh_before == account.refresh_before
            && self.grants == grants
    }

    fn grants_to(&self, peer: Peer) -> bool {
        self.grants.iter().any(|grant| match *grant {
            Principal::Uid(uid) => uid == peer.uid,
            Principal::Gid(gid) => gid == peer.gid,
        })
    }

    fn cached(&self, min_valid: i64) -> Option<Arc<CachedToken>> {
        let cache = self.cache.lock().ok()?;
        cache
            .as_ref()
            .filter(|token| refresh::lasts(token.expires_at, min_valid))
            .cloned()
    }

    pub fn state(&self) -> AccountState {
        self.state
            .lock()
            .map_or(AccountState::Degraded, |state| *state)
    }

    pub fn times(&self) -> Times {
        self.times
            .lock()
            .map_or_else(|_| Times::default(), |times| *times)
    }

    pub fn set_next_validation(&self, at: i64) {
        if let Ok(mut times) = self.times.lock() {
            times.next_validation = Some(at);
        }
    }

    /// The configured scopes, space-separated.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The account's own refresh-ahead margin, if it has one.
    pub fn refresh_before(&self) -> Option<u64> {
        self.refresh_before
    }

    pub fn validation_schedule(&self) -> Option<&cron::Schedule> {
        self.validation_schedule.as_deref()
    }
}

/// Daemon-wide settings for refreshes.
#[derive(Debug, Clone, Copy)]
pub struct RefreshSettings {
    pub refresh_before: Option<u64>,
    pub max_backoff: u64,
}

pub struct Tokens {
    store: Arc<Mutex<Store>>,
    http: reqwest::Client,
    audit: Audit,
    alerts: Alerts,
    metrics: Arc<Metrics>,
    events: Events,
    settings: RefreshSettings,
    owner_uid: u32,
    /// The vault this daemon serves (not secret), so clients can tell it is theirs.
    vault_id: String,
    accounts: RwLock<HashMap<String, Arc<Slot>>>,
    data_version: Mutex<i64>,
}

/// Whom a token request is for, as far as the caller may know.
pub enum Lookup {
    Found(Arc<Slot>),
    /// Only the owner learns that an account does not exist.
    Unknown,
    Forbidden,
}

/// The caller, as SO_PEERCRED reports it.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Tokens {
    pub fn load(
        store: Store,
        audit: Audit,
        alerts: Alerts,
        metrics: Arc<Metrics>,
        settings: RefreshSettings,
        owner_uid: u32,
    ) -> Result<Tokens, Error> {
        let tokens = Tokens {
            data_version: Mutex::new(store.data_version()?),
            vault_id: store.vault_id()?,
            store: Arc::new(Mutex::new(store)),
            http: crate::oauth::token::http_client(),
            audit,
            alerts,
            metrics,
            events: Events::default(),
            settings,
            owner_uid,
            accounts: RwLock::new(HashMap::new()),
        };
        tokens.reload_now()?;
        Ok(tokens)
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.accounts.read().ok()?.get(name).cloned()
    }

    /// Visits every account (the background duties' scan). The table is read-locked meanwhile,
    /// so `visit` must not block; spawning work is fine.
    pub fn for_each_slot(&self, mut visit: impl FnMut(&str, &Arc<Slot>)) {
        if let Ok(accounts) = self.accounts.read() {
            for (name, slot) in accounts.iter() {
                visit(name, slot);
            }
        }
    }

    /// The account `peer` asks for. Unknown accounts are `Forbidden` to everyone but the owner,
    /// so that a refusal does not tell whether an account exists.
    pub fn lookup(&self, peer: Peer, name: &str) -> Lookup {
        let owner = peer.uid == self.owner_uid;
        match self.slot(name) {
            Some(slot) if owner || slot.grants_to(peer) => Lookup::Found(slot),
            None if owner => Lookup::Unknown,
            _ => Lookup::Forbidden,
        }
    }

    /// Names and states of the accounts `peer` may fetch.
    pub fn visible_accounts(&self, peer: Peer) -> Vec<(String, &'static str)> {
        let owner = peer.uid == self.owner_uid;
        let mut visible = Vec::new();
        self.for_each_slot(|name, slot| {
            if owner || slot.grants_to(peer) {
                visible.push((name.to_owned(), slot.state().as_str()));
            }
        });
        visible.sort();
        visible
    }

    /// A token for account `name` (its `slot` from `lookup`) as `need` says: from memory when
    /// possible, else from exactly one refresh however many callers ask at once.
    pub async fn obtain(
        &self,
        name: &str,
        slot: &Slot,
        need: Need,
    ) -> Result<Arc<CachedToken>, Failure> {
        if slot.state() == AccountState::ReauthRequired {
            // The grant is dead; its access tokens are likely revoked with it. Say so at once.
            return Err(dead_grant(name, &*slot.flight.lock().await));
        }
        if let Need::Valid { min_valid } = need
            && let Some(token) = slot.cached(min_valid)
        {
            return Ok(token);
        }
        let seen = slot.refreshes.load(Ordering::Acquire);
        let mut flight = slot.flight.lock().await;
        if slot.refreshes.load(Ordering::Acquire) != seen
            && let Some(last) = &flight.last
        {
            // A refresh finished while this caller waited: its result is the answer.
            return last.clone();
        }
        let now = now_unix();
        if now < flight.pause_until {
            return slot.cached(1).ok_or_else(|| paused_failure(&flight, now));
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
        let result = self.refresh(name, slot, need).await;
        let transient = match &result {
            Ok((_, problem)) => problem.as_ref().map(|_| None),
            Err(Error::Unavailable { retry_after, .. }) => Some(*retry_after),
            Err(_) => None,
        };
        match transient {
            Some(retry_after) => {
                flight.failures += 1;
                let random = crate::crypto::random_bytes::<4>()
                    .map_or(0, |b| u32::from_le_bytes(*b.expose()));
                let pause = timing::backoff(
                    flight.failures,
                    retry_after,
                    self.settings.max_backoff,
                    random,
                );
                flight.pause_until = now_unix() + pause;
            }
            None => flight.failures = 0,
        }
        let retry_after = Some(flight.pause_until - now_unix()).filter(|pause| *pause > 0);
        let shared = result
            .map(|(token, _)| token)
            .map_err(|error| Failure::from_error(&error, retry_after));
        flight.last = Some(shared.clone());
        slot.refreshes.fetch_add(1, Ordering::Release);
        shared
    }

    /// Runs a background refresh of `name` unless one is already running for it.
    pub fn spawn_background(self: &Arc<Self>, name: &str, slot: &Arc<Slot>, need: Need) {
        if slot.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tokens, name, slot) = (self.clone(), name.to_owned(), slot.clone());
        tokio::spawn(async move {
            let _ = tokens.obtain(&name, &slot, need).await;
            slot.busy.store(false, Ordering::Release);
        });
    }

    /// One refresh; mirrors the state the store decided and caches the token. Returns the token
    /// and, when the provider failed and a cached token is served instead, why.
    async fn refresh(
        &self,
        name: &str,
        slot: &Slot,
        need: Need,
    ) -> Result<(Arc<CachedToken>, Option<String>), Error> {
        let result = self.refresh_through_store(name, need).await;
        let reason = match &result {
            Ok((issued, _)) => issued.upstream_problem.clone(),
            Err(error) => Some(error.to_string()),
        };
        if let Ok(state) = self.stored_state(name).await {
            self.change_state(name, slot, state, reason);
        }
        let (issued, scope) = result?;
        let token = Arc::new(CachedToken {
            access_token: issued.token.access_token,
            expires_at: issued.token.expires_at,
            scope: scope.unwrap_or_else(|| slot.scope.clone()),
        });
        if let Ok(mut cache) = slot.cache.lock() {
            *cache = Some(token.clone());
        }
        if issued.upstream_problem.is_none()
            && let Ok(mut times) = slot.times.lock()
        {
            if times.expires_at != Some(token.expires_at) {
                self.events.publish(
                    name,
                    Happened::Token {
                        expires_at: token.expires_at,
                    },
                );
            }
            times.issued_at = Some(now_unix());
            times.expires_at = Some(token.expires_at);
        }
        Ok((token, issued.upstream_problem))
    }

    /// Plan, upstream call and commit, with the account's cross-process lock held throughout.
    /// Returns the issued token and the scope the provider granted, when it said.
    async fn refresh_through_store(
        &self,
        name: &str,
        need: Need,
    ) -> Result<(refresh::Issued, Option<String>), Error> {
        let store = self.store.clone();
        let owned = name.to_owned();
        let (_lock, plan) = blocking(move || {
            let store = store.lock().map_err(|_| poisoned())?;
            let lock = store.lock_account(&owned)?;
            let plan = refresh::plan(&store, &owned, need)?;
            Ok((lock, plan))
        })
        .await?;
        let call = match plan {
            Plan::Cached(token) => {
                return Ok((
                    refresh::Issued {
                        token,
                        upstream_problem: None,
                    },
                    None,
                ));
            }
            Plan::Call(call) => call,
        };
        let (account, call) = *call;
        let started = std::time::Instant::now();
        let outcome = call.send(&self.http).await;
        self.metrics
            .upstream_call(name, need, &outcome, started.elapsed().as_secs_f64());
        let scope = match &outcome {
            crate::oauth::Outcome::Refreshed(grant) => grant.scope.clone(),
            _ => None,
        };
        let store = self.store.clone();
        let issued = blocking(move || {
            let mut store = store.lock().map_err(|_| poisoned())?;
            refresh::finish(&mut store, &account, outcome, need)
        })
        .await?;
        Ok((issued, scope))
    }

    async fn stored_state(&self, name: &str) -> Result<AccountState, Error> {
        let store = self.store.clone();
        let owned = name.to_owned();
        blocking(move || Ok(store.lock().map_err(|_| poisoned())?.account(&owned)?.state)).await
    }

    fn change_state(&self, name: &str, slot: &Slot, to: AccountState, reason: Option<String>) {
        let Ok(mut state) = slot.state.lock() else {
            return;
        };
        if *state != to {
            self.notify(name, *state, to, reason);
            *state = to;
        }
    }

    /// A state change goes to the audit log and the alerter.
    fn notify(&self, name: &str, from: AccountState, to: AccountState, reason: Option<String>) {
        self.audit.record(Record::State {
            at: now_unix(),
            account: name.to_owned(),
            from: from.as_str(),
            to: to.as_str(),
            reason: reason.clone(),
        });
        self.events.publish(
            name,
            Happened::State {
                to: to.as_str(),
                reason: reason.clone(),
            },
        );
        self.alerts.state_changed(Change {
            account: name.to_owned(),
            to,
            reason,
        });
    }

    /// Alerts `expiring` for every refresh token whose announced deadline is less than
    /// `before` seconds away, once per deadline (recorded in the vault).
    pub async fn alert_refresh_deadlines(&self, before: u64) {
        let store = self.store.clone();
        let until = now_unix().saturating_add(i64::try_from(before).unwrap_or(i64::MAX));
        let due = blocking(move || {
            let mut store = store.lock().map_err(|_| poisoned())?;
            Ok(store.take_refresh_deadlines(until)?)
        })
        .await;
        match due {
            Ok(due) => {
                for (name, at) in due {
                    self.alerts.refresh_token_expiring(name, at);
                }
            }
            Err(err) => crate::log::emit(
                crate::log::Level::Warning,
                "cannot check refresh-token deadlines",
                &[("error", &err.to_string())],
            ),
        }
    }

    /// How the metadata endpoint names an account: its service-account email, else its name.
    /// `None` when there is no such account. Reads the store; for start-up, not the hot path.
    pub fn service_account_email(&self, name: &str) -> Option<String> {
        let account = self.store.lock().ok()?.account(name).ok()?;
        Some(account.config.service_account_email.unwrap_or(account.name))
    }

    /// The vault owner, as a peer (for listeners that carry no credentials).
    pub fn owner(&self) -> Peer {
        Peer {
            uid: self.owner_uid,
            gid: 0,
            pid: None,
        }
    }

    pub fn vault_id(&self) -> &str {
        &self.vault_id
    }

    pub fn account_count(&self) -> usize {
        self.accounts.read().map_or(0, |accounts| accounts.len())
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The metrics exposition: the counters, every account's state and token expiry from the
    /// table, and the refresh-token deadlines from the store.
    pub async fn metrics_text(&self) -> String {
        let mut accounts = Vec::new();
        self.for_each_slot(|name, slot| {
            accounts.push((
                name.to_owned(),
                slot.state().as_str(),
                slot.times().expires_at,
            ));
        });
        let store = self.store.clone();
        let refresh_deadlines =
            blocking(move || Ok(store.lock().map_err(|_| poisoned())?.refresh_deadlines()?))
                .await
                .unwrap_or_default();
        self.metrics.render(Snapshot {
            accounts,
            refresh_deadlines,
            now: now_unix(),
        })
    }

    /// Picks up accounts, grants and logins changed by other processes, if the vault changed.
    pub async fn reload_if_changed(self: &Arc<Self>) {
        let tokens = self.clone();
        let _ = blocking(move || {
            let version = tokens
                .store
                .lock()
                .map_err(|_| poisoned())?
                .data_version()?;
            let mut known = tokens.data_version.lock().map_err(|_| poisoned())?;
            if *known != version {
                *known = version;
                drop(known);
                tokens.reload_now()?;
            }
            Ok(())
        })
        .await;
    }

    fn reload_now(&self) -> Result<(), Error> {
        let (accounts, grants) = {
            let store = self.store.lock().map_err(|_| poisoned())?;
            (store.summaries()?, store.grants()?)
        };
        let mut by_account: HashMap<String, Vec<Principal>> = HashMap::new();
        for (name, principal) in grants {
            by_account.entry(name).or_default().push(principal);
        }
        let mut table = self.accounts.write().map_err(|_| poisoned())?;
        let mut next = HashMap::with_capacity(accounts.len());
        for account in accounts {
            let name = account.name.clone();
            let grants = by_account.remove(&name).unwrap_or_default();
            let slot = match table.remove(&name) {
                Some(slot) if slot.matches(&account, &grants) => slot,
                Some(old) => {
                    // Another command (login, validate, a direct refresh) changed the account.
                    if old.state() != account.state {
                        let reason = Some(format!(
                            "now {} after another vault command (vault login, validate or token)",
                            account.state.as_str()
                        ));
                        self.notify(&name, old.state(), account.state, reason);
                    }
                    Arc::new(Slot::new(account, grants))
                }
                None => Arc::new(Slot::new(account, grants)),
            };
            next.insert(name, slot);
        }
        *table = next;
        Ok(())
    }
}

/// The answer for an account whose grant is dead: the refresh's own message when this daemon
/// found it, else the fix.
fn dead_grant(name: &str, flight: &Flight) -> Failure {
    match &flight.last {
        Some(Err(failure)) if failure.problem == Problem::ReauthRequired => failure.clone(),
        _ => Failure {
            problem: Problem::ReauthRequired,
            message: format!("account {name:?} must be authorized again. Next: vault login {name}"),
            retry_after: None,
        },
    }
}

fn paused_failure(flight: &Flight, now: i64) -> Failure {
    let retry_after = Some((flight.pause_until - now).max(1));
    match &flight.last {
        Some(Err(failure)) => Failure { retry_after, ..failure.clone() },
        _ => Failure {
            problem: Problem::UpstreamUnavailable,
            message: "the provider was unavailable a moment ago and no valid token is cached; try again shortly".into(),
            retry_after,
        },
    }
}

fn poisoned() -> Error {
    Error::Internal("a lock was poisoned by an earlier panic; restart vault serve".into())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| Err(Error::Internal("a store task failed".into())))
}
