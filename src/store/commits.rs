//! What a call's outcome commits: tokens (a rotated refresh token with its access token, in one
//! durable transaction) or a failure's state, each fenced on the account's generation; and the
//! `RefreshStore` seam through which the refresh pipeline reads and commits.

use rusqlite::{TransactionBehavior, params};

use super::events::log_event;
use super::lock::AccountLock;
use super::sealing::put_secret;
use super::{Store, StoreError, now};
use crate::account::{Account, AccountState, SecretKind, Transition};
use crate::crypto::Key;
use crate::secret::SecretString;

impl Store {
    /// Replaces an account's grant with a new authorization's tokens (`vault login`): whatever a
    /// refresh in flight commits after it is refused as superseded.
    pub fn replace_grant(
        &mut self,
        account: &Account,
        update: &TokenUpdate<'_>,
    ) -> Result<Option<Transition>, StoreError> {
        self.commit_tokens(account, update, Fence::None)
    }

    /// Records a call's tokens and the account's (possibly new) state in one durable
    /// transaction: a rotated refresh token is written before anyone is handed its access token.
    fn commit_tokens(
        &mut self,
        account: &Account,
        update: &TokenUpdate<'_>,
        fence: Fence,
    ) -> Result<Option<Transition>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        advance_generation(&tx, account, fence)?;
        apply_token_update(&tx, &self.data_key, self.key_version, account.id, update)?;
        let transition = set_state(&tx, account, AccountState::Active, None)?;
        tx.commit()?;
        Ok(transition)
    }
}

/// What a successful token call changes on an account.
pub struct TokenUpdate<'a> {
    pub access_token: &'a SecretString,
    pub access_expires_at: Option<i64>,
    /// Set when the provider rotated the refresh token: it replaces the stored one.
    pub new_refresh_token: Option<&'a SecretString>,
    pub refresh_expires_at: Option<i64>,
    pub validated: bool,
}

/// Whether a commit requires the account's generation to be the one it read.
#[derive(Clone, Copy)]
enum Fence {
    /// A refresh: refused when anything else committed since its read.
    Generation,
    /// A new authorization: it wins over whatever was in flight.
    None,
}

/// Increments the account's generation, first checking it as `fence` says.
fn advance_generation(
    tx: &rusqlite::Transaction<'_>,
    account: &Account,
    fence: Fence,
) -> Result<(), StoreError> {
    let changed = match fence {
        Fence::Generation => tx.execute(
            "UPDATE accounts SET generation = generation + 1 WHERE id = ?1 AND generation = ?2",
            params![account.id, account.generation],
        )?,
        Fence::None => tx.execute(
            "UPDATE accounts SET generation = generation + 1 WHERE id = ?1",
            [account.id],
        )?,
    };
    if changed == 0 {
        return Err(StoreError::Superseded(account.name.clone()));
    }
    Ok(())
}

pub(super) fn apply_token_update(
    tx: &rusqlite::Transaction<'_>,
    key: &Key,
    key_version: i64,
    account_id: i64,
    update: &TokenUpdate<'_>,
) -> Result<(), StoreError> {
    if let Some(refresh) = update.new_refresh_token {
        put_secret(
            tx,
            key,
            key_version,
            account_id,
            SecretKind::RefreshToken,
            refresh,
        )?;
    }
    put_secret(
        tx,
        key,
        key_version,
        account_id,
        SecretKind::AccessToken,
        update.access_token,
    )?;
    let at = now();
    tx.execute(
        "UPDATE accounts SET access_expires_at = ?2, last_refresh_at = ?3,
             refresh_expires_at = COALESCE(?4, refresh_expires_at),
             last_validated_at = CASE WHEN ?5 THEN ?3 ELSE last_validated_at END
         WHERE id = ?1",
        params![
            account_id,
            update.access_expires_at,
            at,
            update.refresh_expires_at,
            update.validated
        ],
    )?;
    Ok(())
}

/// Sets the account's state and last error; a change is logged as an event and returned.
fn set_state(
    tx: &rusqlite::Transaction<'_>,
    account: &Account,
    state: AccountState,
    reason: Option<&str>,
) -> Result<Option<Transition>, StoreError> {
    let previous: String = tx.query_row(
        "SELECT state FROM accounts WHERE id = ?1",
        [account.id],
        |row| row.get(0),
    )?;
    tx.execute(
        "UPDATE accounts SET state = ?2, last_error = ?3 WHERE id = ?1",
        params![account.id, state.as_str(), reason],
    )?;
    let from = AccountState::parse(&previous).ok_or_else(|| {
        StoreError::BadConfig(account.name.clone(), format!("unknown state {previous:?}"))
    })?;
    if from == state {
        return Ok(None);
    }
    log_event(tx, &account.name, state.as_str(), reason)?;
    Ok(Some(Transition {
        account: account.name.clone(),
        from,
        to: state,
        reason: reason.map(str::to_owned),
    }))
}

/// What a refresh holds while it calls the provider.
pub trait RefreshGuard: Sync {
    /// Whether the request may still be sent: a fleet lease must have room for the whole
    /// request before another host may take it over. A local lock never runs out.
    fn may_send(&self) -> bool {
        true
    }
}

impl RefreshGuard for AccountLock {}

/// The seam through which a refresh reads and commits: SQLite here; the fleet's PostgreSQL
/// store is the second implementation (a lease row instead of a file lock, the same fencing).
pub trait RefreshStore {
    /// Held from the decision to call the provider until the outcome is committed; commits ask
    /// for it, so nothing is committed for a call made without it.
    type Guard: RefreshGuard + Send + 'static;

    fn account(&self, name: &str) -> Result<Account, StoreError>;

    fn secret(
        &self,
        account: &Account,
        kind: SecretKind,
    ) -> Result<Option<SecretString>, StoreError>;

    /// Excludes every other refresh of `account`, in this process and others, until dropped.
    fn guard_refresh(&self, account: &str) -> Result<Self::Guard, StoreError>;

    /// Commits a refresh's tokens if `account.generation` is still current.
    fn commit_refresh(
        &mut self,
        guard: &Self::Guard,
        account: &Account,
        update: &TokenUpdate<'_>,
    ) -> Result<Option<Transition>, StoreError>;

    /// Commits a failed call's state and reason if `account.generation` is still current.
    fn commit_failure(
        &mut self,
        guard: &Self::Guard,
        account: &Account,
        failure: &Failure<'_>,
    ) -> Result<Option<Transition>, StoreError>;
}

/// A failed call, as committed.
pub struct Failure<'a> {
    pub state: AccountState,
    pub reason: &'a str,
    /// The provider's `Retry-After` for a passing failure: a fleet pauses the account at least
    /// that long (the daemon's own backoff honours it too).
    pub retry_after: Option<u64>,
}

impl RefreshStore for Store {
    type Guard = AccountLock;

    fn account(&self, name: &str) -> Result<Account, StoreError> {
        Store::account(self, name)
    }

    fn secret(
        &self,
        account: &Account,
        kind: SecretKind,
    ) -> Result<Option<SecretString>, StoreError> {
        Store::secret(self, account, kind)
    }

    fn guard_refresh(&self, account: &str) -> Result<AccountLock, StoreError> {
        self.lock_account(account)
    }

    fn commit_refresh(
        &mut self,
        _guard: &AccountLock,
        account: &Account,
        update: &TokenUpdate<'_>,
    ) -> Result<Option<Transition>, StoreError> {
        self.commit_tokens(account, update, Fence::Generation)
    }

    fn commit_failure(
        &mut self,
        _guard: &AccountLock,
        account: &Account,
        failure: &Failure<'_>,
    ) -> Result<Option<Transition>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        advance_generation(&tx, account, Fence::Generation)?;
        let transition = set_state(&tx, account, failure.state, Some(failure.reason))?;
        tx.commit()?;
        Ok(transition)
    }
}
