//! The daemon's account table: for each account, who may read it, its cached access token, its
//! refresh timing and its single-flight slot. A valid cached token is answered from here without
//! touching the store, the provider, or any lock held across I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::flight::Flight;
use crate::account::{AccountState, AccountSummary, Principal, Transition};
use crate::refresh;
use crate::secret::SecretString;

/// An access token held in memory, ready to answer.
pub struct CachedToken {
    pub access_token: SecretString,
    pub expires_at: i64,
    /// Usually the slot's own configured scopes, shared rather than copied per token.
    pub scope: Arc<str>,
}

/// When the account's token was issued and expires, and when it is next validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct Times {
    pub issued_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub next_validation: Option<i64>,
}

/// The caller, as SO_PEERCRED reports it.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// Whom a token request is for, as far as the caller may know.
pub enum Lookup {
    Found(Arc<Slot>),
    /// Only the owner learns that an account does not exist.
    Unknown,
    Forbidden,
}

pub struct Slot {
    /// Shared with the table's key: 100,000 accounts keep one copy of each name.
    name: Arc<str>,
    state: Mutex<AccountState>,
    grants: Vec<Principal>,
    /// The configured scopes, answered when the provider did not name the granted ones.
    scope: Arc<str>,
    /// Boxed: most accounts have none, and an inline schedule would triple the slot's size.
    validation_schedule: Option<Box<cron::Schedule>>,
    /// The account's own schedule as stored, to notice when it changes.
    schedule_text: Option<String>,
    refresh_before: Option<u64>,
    cache: Mutex<Option<Arc<CachedToken>>>,
    times: Mutex<Times>,
    /// A background refresh (ahead of expiry, or validation) is running.
    busy: AtomicBool,
    pub(super) flight: Flight,
}

impl Slot {
    fn new(name: Arc<str>, account: AccountSummary, grants: Vec<Principal>) -> Slot {
        Slot {
            state: Mutex::new(account.state),
            grants,
            scope: Arc::from(account.scope),
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
            busy: AtomicBool::new(false),
            flight: Flight::default(),
            name,
        }
    }

    /// Whether this slot still describes `account` as the store has it: nothing was committed
    /// by another process since, and its schedule and grants are the same.
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

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cached(&self, min_valid: i64) -> Option<Arc<CachedToken>> {
        let cache = self.cache.lock().ok()?;
        cache
            .as_ref()
            .filter(|token| refresh::lasts(token.expires_at, min_valid))
            .cloned()
    }

    /// Caches a new token; returns whether it replaced the one the slot knew (another expiry).
    pub fn cache(&self, token: Arc<CachedToken>, fresh_from_provider: bool) -> bool {
        let expires_at = token.expires_at;
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some(token);
        }
        let Ok(mut times) = self.times.lock() else {
            return false;
        };
        if !fresh_from_provider {
            return false;
        }
        let replaced = times.expires_at != Some(expires_at);
        times.issued_at = Some(crate::clock::now_unix());
        times.expires_at = Some(expires_at);
        replaced
    }

    pub fn state(&self) -> AccountState {
        self.state
            .lock()
            .map_or(AccountState::Degraded, |state| *state)
    }

    /// Mirrors a state the store committed.
    pub fn set_state(&self, to: AccountState) {
        if let Ok(mut state) = self.state.lock() {
            *state = to;
        }
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
    pub fn scope(&self) -> &Arc<str> {
        &self.scope
    }

    /// The account's own refresh-ahead margin, if it has one.
    pub fn refresh_before(&self) -> Option<u64> {
        self.refresh_before
    }

    pub fn validation_schedule(&self) -> Option<&cron::Schedule> {
        self.validation_schedule.as_deref()
    }

    /// Marks a background refresh as running; false when one already is.
    pub fn start_background(&self) -> bool {
        !self.busy.swap(true, Ordering::AcqRel)
    }

    pub fn end_background(&self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// Every account the daemon serves, by name.
pub struct AccountTable {
    owner_uid: u32,
    accounts: RwLock<HashMap<Arc<str>, Arc<Slot>>>,
}

impl AccountTable {
    pub fn new(owner_uid: u32) -> AccountTable {
        AccountTable {
            owner_uid,
            accounts: RwLock::new(HashMap::new()),
        }
    }

    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.accounts.read().ok()?.get(name).cloned()
    }

    pub fn len(&self) -> usize {
        self.accounts.read().map_or(0, |accounts| accounts.len())
    }

    /// Visits every account (the background duties' scan). The table is read-locked meanwhile,
    /// so `visit` must not block; spawning work is fine.
    pub fn for_each(&self, mut visit: impl FnMut(&Arc<Slot>)) {
        if let Ok(accounts) = self.accounts.read() {
            accounts.values().for_each(&mut visit);
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
    pub fn visible_to(&self, peer: Peer) -> Vec<(String, AccountState)> {
        let owner = peer.uid == self.owner_uid;
        let mut visible = Vec::new();
        self.for_each(|slot| {
            if owner || slot.grants_to(peer) {
                visible.push((slot.name().to_owned(), slot.state()));
            }
        });
        visible.sort_by(|a, b| a.0.cmp(&b.0));
        visible
    }

    /// Rebuilds the table from the store's accounts and grants, keeping the slots (and their
    /// cached tokens) of accounts nobody else changed. Returns the state changes other
    /// processes committed (a login, a validation, a refresh by `vault token`).
    pub fn rebuild(
        &self,
        accounts: Vec<AccountSummary>,
        grants: Vec<(String, Principal)>,
    ) -> Vec<Transition> {
        let mut by_account: HashMap<String, Vec<Principal>> = HashMap::new();
        for (name, principal) in grants {
            by_account.entry(name).or_default().push(principal);
        }
        let Ok(mut table) = self.accounts.write() else {
            return Vec::new();
        };
        let mut changed = Vec::new();
        let mut next = HashMap::with_capacity(accounts.len());
        for account in accounts {
            let grants = by_account.remove(&account.name).unwrap_or_default();
            let slot = match table.remove(account.name.as_str()) {
                Some(slot) if slot.matches(&account, &grants) => slot,
                Some(old) => {
                    if old.state() != account.state {
                        changed.push(Transition {
                            account: account.name.clone(),
                            from: old.state(),
                            to: account.state,
                            reason: Some(format!(
                                "now {} after another vault command (vault login, validate or token)",
                                account.state.as_str()
                            )),
                        });
                    }
                    Arc::new(Slot::new(old.name.clone(), account, grants))
                }
                None => Arc::new(Slot::new(Arc::from(account.name.as_str()), account, grants)),
            };
            next.insert(slot.name.clone(), slot);
        }
        *table = next;
        changed
    }
}
