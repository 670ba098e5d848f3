//! The vault a command works on: the embedded SQLite vault, or the fleet's on PostgreSQL. Both
//! answer the same calls; the refresh pipeline sees one `RefreshStore` either way.

use super::commits::{Failure, RefreshGuard, RefreshStore, TokenUpdate};
use std::path::Path;

use super::lock::Purpose;
use super::{
    AccountLock, Lease, NewAccount, PgStore, RotatedKey, RotationDue, RotationLease,
    RotationRecord, SecretRotation, Store, StoreError, SummaryRow,
};
use crate::account::{Account, AccountSummary, Principal, SecretKind, Transition};
use crate::secret::SecretString;

pub enum AnyStore {
    Local(Store),
    Fleet(PgStore),
}

/// A store the tasks of one process share: the daemon's, or a rotation's between its network
/// calls. The lock hands itself to a waiter that has waited (eventual fairness).
pub type SharedStore = std::sync::Arc<parking_lot::Mutex<AnyStore>>;

/// What excludes other refreshes of an account: a lock on this host's vault file, or the
/// fleet's lease.
pub enum AnyGuard {
    Lock(AccountLock),
    Lease(Lease),
}

/// What keeps a second rotation of an account's key from starting: a lock on this host's vault
/// file, or the fleet's rotation lease.
pub enum RotationGuard {
    Lock(AccountLock),
    Lease(RotationLease),
}

impl RefreshGuard for AnyGuard {
    fn may_send(&self) -> bool {
        match self {
            AnyGuard::Lock(lock) => lock.may_send(),
            AnyGuard::Lease(lease) => lease.may_send(),
        }
    }
}

impl AnyStore {
    pub fn shared(self) -> SharedStore {
        std::sync::Arc::new(parking_lot::Mutex::new(self))
    }

    /// The embedded vault, for what fleet mode does not do yet.
    pub fn local(&self) -> Option<&Store> {
        match self {
            AnyStore::Local(store) => Some(store),
            AnyStore::Fleet(_) => None,
        }
    }

    /// The fleet's store, for what only a fleet does (its alert outbox).
    pub fn fleet(&self) -> Option<&PgStore> {
        match self {
            AnyStore::Local(_) => None,
            AnyStore::Fleet(store) => Some(store),
        }
    }

    pub fn local_mut(&mut self) -> Option<&mut Store> {
        match self {
            AnyStore::Local(store) => Some(store),
            AnyStore::Fleet(_) => None,
        }
    }

    /// The vault directory on this host (config.toml, the audit log).
    pub fn dir(&self) -> &Path {
        match self {
            AnyStore::Local(store) => store.dir(),
            AnyStore::Fleet(store) => store.dir(),
        }
    }

    pub fn vault_id(&self) -> Result<String, StoreError> {
        match self {
            AnyStore::Local(store) => store.vault_id(),
            AnyStore::Fleet(store) => Ok(store.vault_id().to_owned()),
        }
    }

    /// Takes the data key another host's rekey delivered, if there was one since (a fleet's
    /// daemon; the embedded vault is rekeyed by its own user only).
    pub fn follow_rekey(&mut self) -> Result<bool, StoreError> {
        match self {
            AnyStore::Local(_) => Ok(false),
            AnyStore::Fleet(store) => store.follow_rekey(),
        }
    }

    /// A number that changes with every committed change of the accounts.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        match self {
            AnyStore::Local(store) => store.data_version(),
            AnyStore::Fleet(store) => store.data_version(),
        }
    }

    pub fn visit_summaries(&self, visit: impl FnMut(&SummaryRow<'_>)) -> Result<(), StoreError> {
        match self {
            AnyStore::Local(store) => store.visit_summaries(visit),
            AnyStore::Fleet(store) => store.visit_summaries(visit),
        }
    }

    /// Whether this process validates account `name` at firing `firing`: always on this host's
    /// own vault; on a fleet, only the host that takes it first.
    pub fn claim_validation(&self, name: &str, firing: i64) -> Result<bool, StoreError> {
        match self {
            AnyStore::Local(_) => Ok(true),
            AnyStore::Fleet(store) => store.claim_validation(name, firing),
        }
    }

    /// The validations this process takes over from a host whose claim ran out (a fleet's).
    pub fn claim_abandoned_validations(&self) -> Result<Vec<String>, StoreError> {
        match self {
            AnyStore::Local(_) => Ok(Vec::new()),
            AnyStore::Fleet(store) => store.claim_abandoned_validations(),
        }
    }

    /// Who besides the owner may fetch tokens on this host.
    pub fn grants(&self) -> Result<Vec<(String, Principal)>, StoreError> {
        match self {
            AnyStore::Local(store) => store.grants(),
            AnyStore::Fleet(store) => store.grants(),
        }
    }

    pub fn account(&self, name: &str) -> Result<Account, StoreError> {
        match self {
            AnyStore::Local(store) => store.account(name),
            AnyStore::Fleet(store) => store.account(name),
        }
    }

    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        match self {
            AnyStore::Local(store) => store.accounts(),
            AnyStore::Fleet(store) => store.accounts(),
        }
    }

    pub fn summaries(&self) -> Result<Vec<AccountSummary>, StoreError> {
        match self {
            AnyStore::Local(store) => store.summaries(),
            AnyStore::Fleet(store) => store.summaries(),
        }
    }

    pub fn set_client_secret(
        &mut self,
        name: &str,
        new: &SecretString,
        expires_at: Option<i64>,
    ) -> Result<SecretRotation, StoreError> {
        match self {
            AnyStore::Local(store) => store.set_client_secret(name, new, expires_at),
            AnyStore::Fleet(store) => store.set_client_secret(name, new, expires_at),
        }
    }

    pub fn set_client_secret_expiry(
        &mut self,
        name: &str,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Local(store) => store.set_client_secret_expiry(name, expires_at),
            AnyStore::Fleet(store) => store.set_client_secret_expiry(name, expires_at),
        }
    }

    pub fn retire_previous_client_secret(&mut self, name: &str) -> Result<(), StoreError> {
        match self {
            AnyStore::Local(store) => store.retire_previous_client_secret(name),
            AnyStore::Fleet(store) => store.retire_previous_client_secret(name),
        }
    }

    pub fn set_identity(
        &mut self,
        account: &Account,
        identity: Option<&crate::oauth::identity::Identity>,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Local(store) => store.set_identity(account, identity),
            AnyStore::Fleet(store) => store.set_identity(account, identity),
        }
    }

    /// Replaces the account's grant with a new authorization's tokens (`vault login`).
    pub fn replace_grant(
        &mut self,
        account: &Account,
        update: &TokenUpdate<'_>,
    ) -> Result<Option<Transition>, StoreError> {
        match self {
            AnyStore::Local(store) => store.replace_grant(account, update),
            AnyStore::Fleet(store) => store.replace_grant(account, update),
        }
    }

    pub fn remove_account(&mut self, name: &str) -> Result<(), StoreError> {
        match self {
            AnyStore::Local(store) => store.remove_account(name),
            AnyStore::Fleet(store) => store.remove_account(name),
        }
    }

    /// Sets (or, with `Some(None)`, clears) an account's own validation schedule and
    /// refresh-ahead margin; `None` leaves one as it is.
    pub fn set_schedule(
        &mut self,
        name: &str,
        schedule: Option<Option<&str>>,
        refresh_before: Option<Option<u64>>,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Local(store) => {
                if let Some(schedule) = schedule {
                    store.set_validation_schedule(name, schedule)?;
                }
                if let Some(seconds) = refresh_before {
                    store.set_refresh_before(name, seconds)?;
                }
                Ok(())
            }
            AnyStore::Fleet(store) => store.set_schedule(name, schedule, refresh_before),
        }
    }

    /// Takes the account's key rotation for this process; `RotationUnderWay` when another
    /// rotation of it runs (here, or on another host of the fleet).
    pub fn guard_rotation(&self, name: &str) -> Result<RotationGuard, StoreError> {
        match self {
            AnyStore::Local(store) => {
                store.account(name)?;
                AccountLock::try_acquire_for(store.dir(), name, Purpose::KeyRotation)?
                    .map(RotationGuard::Lock)
                    .ok_or_else(|| StoreError::RotationUnderWay(name.to_owned()))
            }
            AnyStore::Fleet(store) => store.guard_rotation(name).map(RotationGuard::Lease),
        }
    }

    pub fn release_rotation(&self, guard: RotationGuard) {
        if let (AnyStore::Fleet(store), RotationGuard::Lease(lease)) = (self, guard) {
            store.release_rotation(lease);
        }
    }

    pub fn rotation_record(&self, account: &Account) -> Result<RotationRecord, StoreError> {
        match self {
            AnyStore::Local(store) => store.rotation_record(account),
            AnyStore::Fleet(store) => store.rotation_record(account),
        }
    }

    pub fn save_rotation_record(
        &mut self,
        account: &Account,
        record: &RotationRecord,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Local(store) => store.save_rotation_record(account, record),
            AnyStore::Fleet(store) => store.save_rotation_record(account, record),
        }
    }

    /// Commits a rotated key under the account's refresh `guard`.
    pub fn commit_rotated_key(
        &mut self,
        guard: &AnyGuard,
        account: &Account,
        new: &RotatedKey<'_>,
    ) -> Result<(), StoreError> {
        match (self, guard) {
            (AnyStore::Local(store), AnyGuard::Lock(_)) => store.commit_rotated_key(account, new),
            (AnyStore::Fleet(store), AnyGuard::Lease(lease)) => {
                store.commit_rotated_key(lease, account, new)
            }
            _ => Err(mismatched()),
        }
    }

    pub fn finish_rotation(
        &mut self,
        account: &Account,
        record: &RotationRecord,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Local(store) => store.finish_rotation(account, record),
            AnyStore::Fleet(store) => store.finish_rotation(account, record),
        }
    }

    pub fn rotation_candidates(&self) -> Result<Vec<RotationDue>, StoreError> {
        match self {
            AnyStore::Local(store) => store.rotation_candidates(),
            AnyStore::Fleet(store) => store.rotation_candidates(),
        }
    }

    pub fn set_rotate_every(&mut self, name: &str, every: Option<i64>) -> Result<(), StoreError> {
        match self {
            AnyStore::Local(store) => store.set_rotate_every(name, every),
            AnyStore::Fleet(store) => store.set_rotate_every(name, every),
        }
    }

    /// Stores new accounts: all of them, or none.
    pub fn insert_accounts(&mut self, accounts: &[NewAccount<'_>]) -> Result<(), StoreError> {
        match self {
            AnyStore::Local(store) => store.insert_accounts(accounts),
            AnyStore::Fleet(store) => store.insert_accounts(accounts),
        }
    }
}

/// A guard of one backend handed to the other: the pipeline never does it.
fn mismatched() -> StoreError {
    StoreError::Database("a refresh guard of another vault".into())
}

impl RefreshStore for AnyStore {
    type Guard = AnyGuard;

    fn account(&self, name: &str) -> Result<Account, StoreError> {
        AnyStore::account(self, name)
    }

    fn secret(
        &self,
        account: &Account,
        kind: SecretKind,
    ) -> Result<Option<SecretString>, StoreError> {
        match self {
            AnyStore::Local(store) => store.secret(account, kind),
            AnyStore::Fleet(store) => store.secret(account, kind),
        }
    }

    fn guard_refresh(&self, account: &str) -> Result<AnyGuard, StoreError> {
        Ok(match self {
            AnyStore::Local(store) => AnyGuard::Lock(store.guard_refresh(account)?),
            AnyStore::Fleet(store) => AnyGuard::Lease(store.guard_refresh(account)?),
        })
    }

    fn commit_refresh(
        &mut self,
        guard: &AnyGuard,
        account: &Account,
        update: &TokenUpdate<'_>,
    ) -> Result<Option<Transition>, StoreError> {
        match (self, guard) {
            (AnyStore::Local(store), AnyGuard::Lock(lock)) => {
                store.commit_refresh(lock, account, update)
            }
            (AnyStore::Fleet(store), AnyGuard::Lease(lease)) => {
                store.commit_refresh(lease, account, update)
            }
            _ => Err(mismatched()),
        }
    }

    fn commit_failure(
        &mut self,
        guard: &AnyGuard,
        account: &Account,
        failure: &Failure<'_>,
    ) -> Result<Option<Transition>, StoreError> {
        match (self, guard) {
            (AnyStore::Local(store), AnyGuard::Lock(lock)) => {
                store.commit_failure(lock, account, failure)
            }
            (AnyStore::Fleet(store), AnyGuard::Lease(lease)) => {
                store.commit_failure(lease, account, failure)
            }
            _ => Err(mismatched()),
        }
    }
}
