//! Rotating an account's client secret without downtime: the new secret becomes the newest, the
//! one in use is kept as the previous (tried when the provider refuses the newest with
//! `invalid_client`) until the user retires it, once the newest is proven to work alone.

use rusqlite::{TransactionBehavior, params};

use super::events::log_event;
use super::sealing::{open_secret, put_secret, secret_exists};
use super::{Store, StoreError};
use crate::account::SecretKind;
use crate::secret::SecretString;

/// What storing a new client secret did with the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretRotation {
    /// The secret in use is now the previous one, kept as a fallback.
    Started,
    /// A rotation was already under way: its newest secret was replaced, and the previous one
    /// (the secret known to have worked) is still kept.
    NewestReplaced,
}

impl Store {
    /// Makes `new` the client secret of account `name`, expiring at `expires_at` if known,
    /// in one transaction.
    pub fn set_client_secret(
        &mut self,
        name: &str,
        new: &SecretString,
        expires_at: Option<i64>,
    ) -> Result<SecretRotation, StoreError> {
        let account = self.account(name)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = open_secret(&tx, &self.data_key, &account, SecretKind::ClientSecret)?
            .ok_or_else(|| StoreError::NoClientSecret(name.to_owned()))?;
        let under_way = secret_exists(&tx, &account, SecretKind::PreviousClientSecret)?;
        let rotation = if under_way {
            SecretRotation::NewestReplaced
        } else {
            put_secret(
                &tx,
                &self.data_key,
                self.key_version,
                account.id,
                SecretKind::PreviousClientSecret,
                &current,
            )?;
            SecretRotation::Started
        };
        put_secret(
            &tx,
            &self.data_key,
            self.key_version,
            account.id,
            SecretKind::ClientSecret,
            new,
        )?;
        record_expiry(&tx, account.id, expires_at)?;
        log_event(&tx, name, "client_secret_set", None)?;
        tx.commit()?;
        Ok(rotation)
    }

    /// Records when the client secret in use of account `name` expires.
    pub fn set_client_secret_expiry(
        &mut self,
        name: &str,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let account = self.account(name)?;
        if !self.has_secret(&account, SecretKind::ClientSecret)? {
            return Err(StoreError::NoClientSecret(name.to_owned()));
        }
        record_expiry(&self.conn, account.id, expires_at)
    }

    /// Deletes the previous client secret of account `name`: the rotation is over.
    pub fn retire_previous_client_secret(&mut self, name: &str) -> Result<(), StoreError> {
        let account = self.account(name)?;
        let tx = self.conn.transaction()?;
        let deleted = tx.execute(
            "DELETE FROM secrets WHERE account_id = ?1 AND kind = ?2",
            params![account.id, SecretKind::PreviousClientSecret.as_str()],
        )?;
        if deleted == 0 {
            return Err(StoreError::NoPreviousClientSecret(name.to_owned()));
        }
        log_event(&tx, name, "client_secret_retired", None)?;
        tx.commit()?;
        Ok(())
    }
}

/// When the newest client secret of account `account_id` expires (`None`: not known).
fn record_expiry(
    conn: &rusqlite::Connection,
    account_id: i64,
    expires_at: Option<i64>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE accounts SET client_secret_expires_at = ?2 WHERE id = ?1",
        params![account_id, expires_at],
    )?;
    Ok(())
}
