//! What a rotation of an account's own key commits, and where an unfinished one stands: the
//! new key and the step "delete the old one at the provider" in one transaction, so a crash at
//! any point leaves a working key stored and tells the next run what to clean up.

use rusqlite::{TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::events::log_event;
use super::sealing::{open_secret, put_secret};
use super::{Store, StoreError};
use crate::account::{Account, SecretKind};
use crate::crypto::Key;
use crate::secret::SecretString;

/// Where an account's key rotation stands (sealed as `SecretKind::KeyRotation`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotationRecord {
    /// The provider's id of the key in use, when the key itself does not carry it (a Microsoft
    /// client secret's `keyId`; a Google key file names its own `private_key_id`).
    pub key_id: Option<String>,
    /// A rotation that has not finished.
    pub step: Option<RotationStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum RotationStep {
    /// A new key is being created at the provider: a key it lists that is neither `known` nor
    /// the one in use, created since `since`, is this rotation's, never stored, and is deleted.
    Creating { since: i64, known: Vec<String> },
    /// The new key is stored; the one it replaced is still to be deleted at the provider.
    Retiring { key_id: String },
}

/// An account the daemon's rotation duty looks at.
#[derive(Debug)]
pub struct RotationDue {
    pub name: String,
    /// When its key is old enough to rotate (`vault schedule --rotate-every`).
    pub due_at: Option<i64>,
    /// Its last rotation stopped half-way: the next run cleans up at the provider.
    pub unfinished: bool,
}

/// A key the provider created and the vault proved, as it is committed.
pub struct RotatedKey<'a> {
    /// `ServiceAccountKey` or `ClientSecret`.
    pub kind: SecretKind,
    pub secret: &'a SecretString,
    pub key_id: &'a str,
    pub created_at: i64,
    /// When the provider will stop accepting it (a Microsoft secret's `endDateTime`).
    pub expires_at: Option<i64>,
    /// The key it replaces, to delete at the provider next; `None` when it cannot be told.
    pub replaces: Option<&'a str>,
}

impl Store {
    /// The account's rotation record; the default when it never rotated.
    pub fn rotation_record(&self, account: &Account) -> Result<RotationRecord, StoreError> {
        read_record(
            account,
            open_secret(&self.conn, &self.data_key, account, SecretKind::KeyRotation)?,
        )
    }

    /// Records where the account's rotation stands.
    pub fn save_rotation_record(
        &mut self,
        account: &Account,
        record: &RotationRecord,
    ) -> Result<(), StoreError> {
        let seal = Sealer::of(&self.data_key, self.key_version);
        let tx = self.conn.transaction()?;
        seal.record(&tx, account, record)?;
        tx.commit()?;
        Ok(())
    }

    /// Makes `new` the account's key in one transaction, with the step that deletes the key it
    /// replaces. A client secret replaced is kept as the previous one until that step is done:
    /// a secret just created may not yet have reached every server of the provider.
    pub fn commit_rotated_key(
        &mut self,
        account: &Account,
        new: &RotatedKey<'_>,
    ) -> Result<(), StoreError> {
        let seal = Sealer::of(&self.data_key, self.key_version);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if new.kind == SecretKind::ClientSecret {
            let current = open_secret(&tx, &self.data_key, account, SecretKind::ClientSecret)?
                .ok_or_else(|| StoreError::NoClientSecret(account.name.clone()))?;
            seal.secret(&tx, account, SecretKind::PreviousClientSecret, &current)?;
        }
        seal.secret(&tx, account, new.kind, new.secret)?;
        tx.execute(
            "UPDATE accounts SET key_created_at = ?2,
                 client_secret_expires_at = CASE WHEN ?3 THEN ?4 ELSE client_secret_expires_at END
             WHERE id = ?1",
            params![
                account.id,
                new.created_at,
                new.kind == SecretKind::ClientSecret,
                new.expires_at
            ],
        )?;
        let record = RotationRecord {
            key_id: Some(new.key_id.to_owned()),
            step: new.replaces.map(|old| RotationStep::Retiring {
                key_id: old.to_owned(),
            }),
        };
        seal.record(&tx, account, &record)?;
        let detail = format!("{} replaces {}", new.key_id, new.replaces.unwrap_or("?"));
        log_event(&tx, &account.name, "key_rotated", Some(&detail))?;
        tx.commit()?;
        Ok(())
    }

    /// Ends a rotation whose old key is gone from the provider (or was never known there).
    pub fn finish_rotation(
        &mut self,
        account: &Account,
        record: &RotationRecord,
    ) -> Result<(), StoreError> {
        let seal = Sealer::of(&self.data_key, self.key_version);
        let tx = self.conn.transaction()?;
        let done = RotationRecord {
            key_id: record.key_id.clone(),
            step: None,
        };
        seal.record(&tx, account, &done)?;
        tx.execute(
            "DELETE FROM secrets WHERE account_id = ?1 AND kind = ?2",
            params![account.id, SecretKind::PreviousClientSecret.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The accounts the daemon's rotation duty looks at: those rotated on a schedule, and those
    /// whose last rotation did not finish.
    pub fn rotation_candidates(&self) -> Result<Vec<RotationDue>, StoreError> {
        let rows: Vec<(String, Option<i64>, bool)> = {
            let mut stmt = self.conn.prepare(
                "SELECT a.name, COALESCE(a.key_created_at, a.created_at) + a.rotate_every,
                     EXISTS (SELECT 1 FROM secrets s WHERE s.account_id = a.id AND s.kind = ?1) AS rotated
                 FROM accounts a WHERE a.rotate_every IS NOT NULL OR rotated",
            )?;
            let rows = stmt.query_map([SecretKind::KeyRotation.as_str()], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        Ok(due_rotations(rows, |name| {
            self.account(name)
                .and_then(|account| self.rotation_record(&account))
        }))
    }
}

/// The accounts to rotate, from (name, due date, has a rotation record) rows: those with a due
/// date, and those whose record (read by `record`) shows an unfinished rotation.
pub(super) fn due_rotations(
    rows: Vec<(String, Option<i64>, bool)>,
    record: impl Fn(&str) -> Result<RotationRecord, StoreError>,
) -> Vec<RotationDue> {
    rows.into_iter()
        .filter_map(|(name, due_at, has_record)| {
            // Only the few accounts that ever rotated have a record to open.
            let unfinished = has_record && record(&name).is_ok_and(|record| record.step.is_some());
            (due_at.is_some() || unfinished).then_some(RotationDue {
                name,
                due_at,
                unfinished,
            })
        })
        .collect()
}

/// The rotation record from its opened JSON; the default when there is none (never rotated).
pub(super) fn read_record(
    account: &Account,
    json: Option<SecretString>,
) -> Result<RotationRecord, StoreError> {
    let Some(json) = json else {
        return Ok(RotationRecord::default());
    };
    serde_json::from_str(json.expose()).map_err(|_| {
        StoreError::BadConfig(
            account.name.clone(),
            "its key rotation record is unreadable".into(),
        )
    })
}

/// Seals with the vault's current data key (borrowed apart from the connection a transaction
/// borrows).
struct Sealer<'a> {
    key: &'a Key,
    version: i64,
}

impl<'a> Sealer<'a> {
    fn of(key: &'a Key, version: i64) -> Self {
        Sealer { key, version }
    }

    fn secret(
        &self,
        tx: &rusqlite::Transaction<'_>,
        account: &Account,
        kind: SecretKind,
        value: &SecretString,
    ) -> Result<(), StoreError> {
        put_secret(tx, self.key, self.version, account.id, kind, value)
    }

    fn record(
        &self,
        tx: &rusqlite::Transaction<'_>,
        account: &Account,
        record: &RotationRecord,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(record)
            .map_err(|err| StoreError::BadConfig(account.name.clone(), err.to_string()))?;
        self.secret(
            tx,
            account,
            SecretKind::KeyRotation,
            &SecretString::from(json),
        )
    }
}
