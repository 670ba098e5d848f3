//! The daemon's account table: for each account, who may read it, its cached access token, its
//! refresh timing and its single-flight slot. A valid cached token is answered from here without
//! touching the store, the provider, or any lock held across I/O.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::flight::Flight;
use crate::account::{AccountState, Principal, Transition};
use crate::refresh;
use crate::secret::Secret;
use crate::store::{StoreError, SummaryRow};

/// An access token held in memory, ready to answer.
pub struct CachedToken {
    /// Exactly as long as the token: no spare capacity in 100,000 of them.
    pub access_token: Secret<Box<str>>,
    pub expires_at: i64,
    /// Usually the slot's own configured scopes, shared rather than copied per token.
    pub scope: Arc<str>,
}

impl CachedToken {
    /// `token` for the cache, with the scope it answers.
    pub fn new(token: &refresh::AccessToken, scope: Arc<str>) -> Arc<CachedToken> {
        Arc::new(CachedToken {
            access_token: token.access_token.boxed(),
            expires_at: token.expires_at,
            scope,
        })
    }
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

/// One per account, 100,000 of them in a big vault: every field is kept small (what most
/// accounts lack is boxed or empty), see the test on its size.
pub struct Slot {
    /// Also the table's key (see `Entry`).
    name: Box<str>,
    /// An `AccountState`, as its position in `AccountState::ALL`.
    state: AtomicU8,
    grants: Box<[Principal]>,
    /// The configured scopes, answered when the provider did not name the granted ones; one
    /// copy shared by every account with the same scopes.
    scope: Arc<str>,
    /// The account's own validation schedule; most accounts have none.
    schedule: Option<Box<OwnSchedule>>,
    /// Seconds; a margin past 136 years is kept as that (any margin is capped at half the
    /// token's lifetime anyway).
    refresh_before: Option<u32>,
    /// The cached token and the times, under one lock.
    memo: Mutex<Memo>,
    /// A background refresh (ahead of expiry, or validation) is running.
    busy: AtomicBool,
    pub(super) flight: Flight,
}

/// An account's own validation schedule: as stored (to notice a change), and parsed.
struct OwnSchedule {
    text: String,
    parsed: Option<cron::Schedule>,
}

struct Memo {
    token: Option<Arc<CachedToken>>,
    times: PackedTimes,
}

/// `Times` in 24 bytes instead of 48: `NONE` stands for a time not known.
#[derive(Clone, Copy)]
struct PackedTimes([i64; 3]);

impl PackedTimes {
    const NONE: i64 = i64::MIN;

    fn pack(times: Times) -> PackedTimes {
        let pack = |time: Option<i64>| time.unwrap_or(Self::NONE);
        PackedTimes([
            pack(times.issued_at),
            pack(times.expires_at),
            pack(times.next_validation),
        ])
    }

    fn unpack(self) -> Times {
        let unpack = |time: i64| (time != Self::NONE).then_some(time);
        Times {
            issued_at: unpack(self.0[0]),
            expires_at: unpack(self.0[1]),
            next_validation: unpack(self.0[2]),
        }
    }
}

fn saturated(seconds: u64) -> u32 {
    u32::try_from(seconds).unwrap_or(u32::MAX)
}

fn state_code(state: AccountState) -> u8 {
    AccountState::ALL
        .iter()
        .position(|known| *known == state)
        .map_or(0, |index| index as u8)
}

impl Slot {
    fn new(
        name: Box<str>,
        scope: Arc<str>,
        account: &SummaryRow<'_>,
        grants: Vec<Principal>,
    ) -> Slot {
        Slot {
            state: AtomicU8::new(state_code(account.state)),
            grants: grants.into_boxed_slice(),
            scope,
            schedule: account.validation_schedule.map(|text| {
                Box::new(OwnSchedule {
                    parsed: crate::config::parse_schedule(text).ok(),
                    text: text.to_owned(),
                })
            }),
            refresh_before: account.refresh_before.map(saturated),
            memo: Mutex::new(Memo {
                token: None,
                times: PackedTimes::pack(Times {
                    issued_at: account.last_refresh_at,
                    expires_at: account.access_expires_at,
                    next_validation: None,
                }),
            }),
            busy: AtomicBool::new(false),
            flight: Flight::default(),
            name,
        }
    }

    /// Whether this slot still describes `account` as the store has it: nothing was committed
    /// by another process since, and its schedule and grants are the same.
    fn matches(&self, account: &SummaryRow<'_>, grants: &[Principal]) -> bool {
        let token_same = self.times().expires_at == account.access_expires_at;
        let own = self.schedule.as_ref().map(|own| own.text.as_str());
        self.state() == account.state
            && token_same
            && own == account.validation_schedule
            && self.refresh_before == account.refresh_before.map(saturated)
            && *self.grants == *grants
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
        let memo = self.memo.lock().ok()?;
        memo.token
            .as_ref()
            .filter(|token| refresh::lasts(token.expires_at, min_valid))
            .cloned()
    }

    /// Caches a new token; returns whether it replaced the one the slot knew (another expiry).
    pub fn cache(&self, token: Arc<CachedToken>, fresh_from_provider: bool) -> bool {
        let Ok(mut memo) = self.memo.lock() else {
            return false;
        };
        let expires_at = token.expires_at;
        memo.token = Some(token);
        if !fresh_from_provider {
            return false;
        }
        let mut times = memo.times.unpack();
        let replaced = times.expires_at != Some(expires_at);
        times.issued_at = Some(crate::clock::now_unix());
        times.expires_at = Some(expires_at);
        memo.times = PackedTimes::pack(times);
        replaced
    }

    pub fn state(&self) -> AccountState {
        let code = usize::from(self.state.load(Ordering::Acquire));
        AccountState::ALL
            .get(code)
            .copied()
            .unwrap_or(AccountState::Degraded)
    }

    /// Mirrors a state the store committed.
    pub fn set_state(&self, to: AccountState) {
        self.state.store(state_code(to), Ordering::Release);
    }

    pub fn times(&self) -> Times {
        self.memo
            .lock()
            .map_or_else(|_| Times::default(), |memo| memo.times.unpack())
    }

    pub fn set_next_validation(&self, at: i64) {
        if let Ok(mut memo) = self.memo.lock() {
            let mut times = memo.times.unpack();
            times.next_validation = Some(at);
            memo.times = PackedTimes::pack(times);
        }
    }

    /// The configured scopes, space-separated.
    pub fn scope(&self) -> &Arc<str> {
        &self.scope
    }

    /// The account's own refresh-ahead margin, if it has one.
    pub fn refresh_before(&self) -> Option<u64> {
        self.refresh_before.map(u64::from)
    }

    pub fn validation_schedule(&self) -> Option<&cron::Schedule> {
        self.schedule.as_ref().and_then(|own| own.parsed.as_ref())
    }

    /// Marks a background refresh as running; false when one already is.
    pub fn start_background(&self) -> bool {
        !self.busy.swap(true, Ordering::AcqRel)
    }

    pub fn end_background(&self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// A slot in the table's set, found by its name: a set of these costs 8 bytes a bucket where a
/// map from name to slot cost 32.
#[derive(Clone)]
struct Entry(Arc<Slot>);

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: `Borrow` requires the two to agree.
        self.0.name.hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Entry {}

/// Every account the daemon serves, by name.
pub struct AccountTable {
    owner_uid: u32,
    accounts: RwLock<HashSet<Entry>>,
}

impl AccountTable {
    pub fn new(owner_uid: u32) -> AccountTable {
        AccountTable {
            owner_uid,
            accounts: RwLock::new(HashSet::new()),
        }
    }

    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        Some(self.accounts.read().ok()?.get(name)?.0.clone())
    }

    pub fn len(&self) -> usize {
        self.accounts.read().map_or(0, |accounts| accounts.len())
    }

    /// Visits every account (the background duties' scan). The table is read-locked meanwhile,
    /// so `visit` must not block; spawning work is fine.
    pub fn for_each(&self, mut visit: impl FnMut(&Arc<Slot>)) {
        if let Ok(accounts) = self.accounts.read() {
            accounts.iter().for_each(|entry| visit(&entry.0));
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

    /// Rebuilds the table from the store's accounts (which `accounts` shows to the visitor it is
    /// given) and grants, keeping the slots (and their cached tokens) of accounts nobody else
    /// changed. Lookups go on meanwhile; the new table replaces the old at once. Returns the state
    /// changes other processes committed (a login, a validation, a refresh by `vault token`).
    #[allow(
        clippy::mutable_key_type,
        reason = "an entry hashes only its slot's name, which never changes"
    )]
    pub fn rebuild(
        &self,
        accounts: impl FnOnce(&mut dyn FnMut(&SummaryRow<'_>)) -> Result<(), StoreError>,
        grants: Vec<(String, Principal)>,
    ) -> Result<Vec<Transition>, StoreError> {
        let mut by_account: HashMap<String, Vec<Principal>> = HashMap::new();
        for (name, principal) in grants {
            by_account.entry(name).or_default().push(principal);
        }
        let mut changed = Vec::new();
        let mut next = HashSet::new();
        {
            let Ok(old) = self.accounts.read() else {
                return Ok(Vec::new());
            };
            next.reserve(old.len());
            // Keyed by the scopes as stored: one shared copy for each distinct set.
            let mut scopes: HashMap<String, Arc<str>> = HashMap::new();
            accounts(&mut |account| {
                let grants = by_account.remove(account.name).unwrap_or_default();
                let raw = account.scopes.unwrap_or_default();
                let scope = match scopes.get(raw) {
                    Some(shared) => shared.clone(),
                    None => {
                        let shared: Arc<str> = Arc::from(account.scope());
                        scopes.insert(raw.to_owned(), shared.clone());
                        shared
                    }
                };
                let previous = old.get(account.name).map(|entry| &entry.0);
                let (slot, transition) = renewed(previous, account, grants, scope);
                changed.extend(transition);
                next.insert(Entry(slot));
            })?;
        }
        // The only writer is the reloader: nothing changed the table since it was read.
        if let Ok(mut table) = self.accounts.write() {
            *table = next;
        }
        Ok(changed)
    }

    /// Renews the slots of the accounts `accounts` shows (another host changed them; their
    /// grants did not change), as `rebuild` would. Returns the state changes, or `None` when an
    /// account is not in the table (added since): then the whole table must be rebuilt.
    #[allow(
        clippy::mutable_key_type,
        reason = "an entry hashes only its slot's name, which never changes"
    )]
    pub fn renew(
        &self,
        accounts: impl FnOnce(&mut dyn FnMut(&SummaryRow<'_>)) -> Result<(), StoreError>,
    ) -> Result<Option<Vec<Transition>>, StoreError> {
        let mut changed = Vec::new();
        let mut renewed_slots = Vec::new();
        let mut unknown = false;
        accounts(&mut |account| match self.slot(account.name) {
            Some(previous) => {
                let grants = previous.grants.to_vec();
                let scope = match *previous.scope == *account.scope() {
                    true => previous.scope.clone(),
                    false => Arc::from(account.scope()),
                };
                let (slot, transition) = renewed(Some(&previous), account, grants, scope);
                changed.extend(transition);
                renewed_slots.push(slot);
            }
            None => unknown = true,
        })?;
        if unknown {
            return Ok(None);
        }
        if let Ok(mut table) = self.accounts.write() {
            for slot in renewed_slots {
                table.replace(Entry(slot));
            }
        }
        Ok(Some(changed))
    }
}

/// The slot for `account` as the store has it now: `previous` kept when nothing changed, else a
/// new one (its cached token dropped: the store holds a newer one), with the change of state
/// another process made.
fn renewed(
    previous: Option<&Arc<Slot>>,
    account: &SummaryRow<'_>,
    grants: Vec<Principal>,
    scope: Arc<str>,
) -> (Arc<Slot>, Option<Transition>) {
    let transition = match previous {
        Some(kept) if kept.matches(account, &grants) => return (kept.clone(), None),
        Some(previous) if previous.state() != account.state => Some(Transition {
            account: account.name.to_owned(),
            from: previous.state(),
            to: account.state,
            reason: Some(format!(
                "now {} after another vault command (vault login, validate or token)",
                account.state.as_str()
            )),
        }),
        _ => None,
    };
    let slot = Arc::new(Slot::new(account.name.into(), scope, account, grants));
    (slot, transition)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every account has a slot: its size is the daemon's memory per account (304 bytes before
    /// it was packed; at 184 or less, the allocation holding it takes 208 bytes, not 224).
    #[test]
    fn a_slot_stays_small() {
        assert!(
            std::mem::size_of::<Slot>() <= 200,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn packed_times_and_states_round_trip() {
        for times in [
            Times::default(),
            Times {
                issued_at: Some(0),
                expires_at: Some(-5),
                next_validation: Some(i64::MAX),
            },
        ] {
            let back = PackedTimes::pack(times).unpack();
            assert_eq!(
                (back.issued_at, back.expires_at, back.next_validation),
                (times.issued_at, times.expires_at, times.next_validation)
            );
        }
        for &state in AccountState::ALL {
            assert_eq!(AccountState::ALL[usize::from(state_code(state))], state);
        }
    }
}
