//! The daemon's accounts: who may read them, their cached access tokens, and single-flight
//! refreshes. A valid cached token is answered from memory without touching the store, the
//! provider, or any lock held across I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::account::{AccountState, AccountSummary, Principal};
use crate::audit::{Audit, Record};
use crate::clock::now_unix;
use crate::error::Error;
use crate::refresh::{self, Plan};
use crate::secret::SecretString;
use crate::store::{Store, StoreError};

/// How long the daemon leaves the provider alone after a transient failure when the provider
/// did not say (`Retry-After`). Capped exponential backoff arrives with the scheduler.
const TRANSIENT_PAUSE: i64 = 10;
/// How often the daemon looks for changes made by other `vault` processes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// An access token held in memory, ready to answer.
pub struct CachedToken {
    pub access_token: SecretString,
    pub expires_at: i64,
    pub scope: String,
}

/// Why a token could not be given, as the socket API reports it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub status: u16,
    pub error: &'static str,
    pub message: String,
    pub retry_after: Option<i64>,
}

impl Failure {
    fn from_error(error: &Error) -> Failure {
        let (status, code, retry_after) = match error {
            Error::ReauthRequired { .. } => (409, "reauth_required", None),
            Error::ClientRejected { .. } | Error::Misconfigured { .. } => {
                (409, "client_error", None)
            }
            Error::Unavailable { retry_after, .. } => {
                let pause = retry_after.map_or(TRANSIENT_PAUSE, |seconds| seconds as i64);
                (503, "upstream_unavailable", Some(pause))
            }
            Error::Store(StoreError::NoSuchAccount(_)) => (404, "unknown_account", None),
            _ => (500, "internal", None),
        };
        Failure {
            status,
            error: code,
            message: error.to_string(),
            retry_after,
        }
    }
}

/// What the last refresh of an account ended with, shared with everyone who waited for it.
#[derive(Default)]
struct Flight {
    last: Option<Result<Arc<CachedToken>, Failure>>,
    /// No upstream call before this time (after a transient failure).
    pause_until: i64,
}

pub struct Slot {
    state: Mutex<AccountState>,
    grants: Vec<Principal>,
    /// The configured scopes, answered when the provider did not name the granted ones.
    scope: String,
    cache: Mutex<Option<Arc<CachedToken>>>,
    /// Bumped after every refresh: a waiter that sees it move takes that refresh's result.
    refreshes: AtomicU64,
    flight: tokio::sync::Mutex<Flight>,
}

impl Slot {
    fn new(account: AccountSummary, grants: Vec<Principal>) -> Slot {
        Slot {
            state: Mutex::new(account.state),
            grants,
            scope: account.scope,
            cache: Mutex::new(None),
            refreshes: AtomicU64::new(0),
            flight: tokio::sync::Mutex::new(Flight::default()),
        }
    }

    /// Whether this slot still describes `account` as the store has it: no other process has
    /// changed its state, its token or its grants since.
    fn matches(&self, account: &AccountSummary, grants: &[Principal]) -> bool {
        let state_same = self.state.lock().is_ok_and(|state| *state == account.state);
        let token_same = self.cache.lock().is_ok_and(|cache| {
            cache
                .as_ref()
                .is_none_or(|token| Some(token.expires_at) == account.access_expires_at)
        });
        state_same && token_same && self.grants == grants
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
}

pub struct Tokens {
    store: Arc<Mutex<Store>>,
    http: reqwest::Client,
    audit: Audit,
    owner_uid: u32,
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
    pub fn load(store: Store, audit: Audit, owner_uid: u32) -> Result<Tokens, Error> {
        let tokens = Tokens {
            data_version: Mutex::new(store.data_version()?),
            store: Arc::new(Mutex::new(store)),
            http: crate::oauth::token::http_client(),
            audit,
            owner_uid,
            accounts: RwLock::new(HashMap::new()),
        };
        tokens.reload_now()?;
        Ok(tokens)
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.accounts.read().ok()?.get(name).cloned()
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
        let Ok(accounts) = self.accounts.read() else {
            return Vec::new();
        };
        let owner = peer.uid == self.owner_uid;
        let mut visible: Vec<(String, &'static str)> = accounts
            .iter()
            .filter(|(_, slot)| owner || slot.grants_to(peer))
            .map(|(name, slot)| {
                (
                    name.clone(),
                    slot.state.lock().map_or("unknown", |state| state.as_str()),
                )
            })
            .collect();
        visible.sort();
        visible
    }

    /// A token for account `name` (its `slot` from `lookup`) valid for `min_valid` seconds: from
    /// memory when possible, else from exactly one refresh however many callers ask at once.
    pub async fn token(
        &self,
        name: &str,
        slot: &Slot,
        min_valid: i64,
    ) -> Result<Arc<CachedToken>, Failure> {
        if let Some(token) = slot.cached(min_valid) {
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
        if now_unix() < flight.pause_until {
            return slot.cached(1).ok_or_else(|| paused_failure(&flight));
        }
        let result = self.refresh(name, slot, min_valid).await;
        let shared = match result {
            Ok((token, problem)) => {
                if problem.is_some() {
                    flight.pause_until = now_unix() + TRANSIENT_PAUSE;
                }
                Ok(token)
            }
            Err(failure) => {
                if failure.status == 503 {
                    flight.pause_until =
                        now_unix() + failure.retry_after.unwrap_or(TRANSIENT_PAUSE);
                }
                Err(failure)
            }
        };
        flight.last = Some(shared.clone());
        slot.refreshes.fetch_add(1, Ordering::Release);
        shared
    }

    /// One refresh under the account's cross-process lock; store work runs on blocking threads
    /// and the store is never held while the provider is called.
    async fn refresh(
        &self,
        name: &str,
        slot: &Slot,
        min_valid: i64,
    ) -> Result<(Arc<CachedToken>, Option<String>), Failure> {
        let result = self.refresh_through_store(name, min_valid).await;
        // The store decided the account's new state (src/account.rs); mirror it.
        let reason = match &result {
            Ok((issued, _)) => issued.upstream_problem.clone(),
            Err(error) => Some(error.to_string()),
        };
        if let Ok(state) = self.stored_state(name).await {
            self.change_state(name, slot, state, reason);
        }
        let (issued, scope) = result.map_err(|error| Failure::from_error(&error))?;
        let token = Arc::new(CachedToken {
            access_token: issued.token.access_token,
            expires_at: issued.token.expires_at,
            scope: scope.unwrap_or_else(|| slot.scope.clone()),
        });
        if let Ok(mut cache) = slot.cache.lock() {
            *cache = Some(token.clone());
        }
        Ok((token, issued.upstream_problem))
    }

    /// Plan, upstream call and commit, with the account's cross-process lock held throughout.
    /// Returns the issued token and the scope the provider granted, when it said.
    async fn refresh_through_store(
        &self,
        name: &str,
        min_valid: i64,
    ) -> Result<(refresh::Issued, Option<String>), Error> {
        let store = self.store.clone();
        let owned = name.to_owned();
        let (_lock, plan) = blocking(move || {
            let store = store.lock().map_err(|_| poisoned())?;
            let lock = store.lock_account(&owned)?;
            let plan = refresh::plan(&store, &owned, min_valid)?;
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
        let outcome = call.send(&self.http).await;
        let scope = match &outcome {
            crate::oauth::Outcome::Refreshed(grant) => grant.scope.clone(),
            _ => None,
        };
        let store = self.store.clone();
        let issued = blocking(move || {
            let mut store = store.lock().map_err(|_| poisoned())?;
            refresh::finish(&mut store, &account, outcome)
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
            self.audit.record(Record::State {
                at: now_unix(),
                account: name.to_owned(),
                from: state.as_str(),
                to: to.as_str(),
                reason,
            });
            *state = to;
        }
    }

    pub fn account_count(&self) -> usize {
        self.accounts.read().map_or(0, |accounts| accounts.len())
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
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
                _ => Arc::new(Slot::new(account, grants)),
            };
            next.insert(name, slot);
        }
        *table = next;
        Ok(())
    }
}

fn paused_failure(flight: &Flight) -> Failure {
    match &flight.last {
        Some(Err(failure)) => failure.clone(),
        _ => Failure {
            status: 503,
            error: "upstream_unavailable",
            message: "the provider was unavailable a moment ago and no valid token is cached; try again shortly".into(),
            retry_after: Some(TRANSIENT_PAUSE),
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
