//! Rotating an account's own key on a fleet (store::rotations on one host): the rotation
//! record sealed like any secret, the new key committed under the account's refresh lease, and
//! one rotation at a time per account across the fleet.

use std::time::Duration;

use super::{Lease, PgStore, Sealed, log_event};
use crate::account::{Account, SecretKind};
use crate::daemon::alert::AlertEvent;
use crate::secret::SecretString;
use crate::store::rotations::{
    RotatedKey, RotationDue, RotationRecord, RotationStep, due_rotations, read_record,
};
use crate::store::{StoreError, now};

/// How long a host may take over a rotation (a proof waits up to two minutes for a new key to
/// spread) before another may start one.
const ROTATION: Duration = Duration::from_secs(900);

/// One host's right to rotate one account's key, until released or run out.
pub struct RotationLease {
    account_id: i64,
    rotation_id: i64,
}

impl PgStore {
    /// Takes the account's rotation for this host; `RotationUnderWay` when another host (or
    /// process) is rotating it.
    pub fn guard_rotation(&self, name: &str) -> Result<RotationLease, StoreError> {
        let (owner, seconds) = (name.to_owned(), ROTATION.as_secs_f64());
        let taken = self.db.run(move |client| {
            Ok(client
                .query_opt(
                    "UPDATE accounts SET rotation_id = nextval('lease_seq'),
                         rotation_until = clock_timestamp() + make_interval(secs => $2)
                     WHERE name = $1
                         AND (rotation_until IS NULL OR rotation_until < clock_timestamp())
                     RETURNING id, rotation_id",
                    &[&owner, &seconds],
                )?
                .map(|row| (row.get(0), row.get(1))))
        })?;
        match taken {
            Some((account_id, rotation_id)) => Ok(RotationLease {
                account_id,
                rotation_id,
            }),
            None => {
                self.account(name)?;
                Err(StoreError::RotationUnderWay(name.to_owned()))
            }
        }
    }

    pub fn release_rotation(&self, lease: RotationLease) {
        let _ = self.db.run(move |client| {
            client.execute(
                "UPDATE accounts SET rotation_until = NULL WHERE id = $1 AND rotation_id = $2",
                &[&lease.account_id, &lease.rotation_id],
            )?;
            Ok(())
        });
    }

    pub fn rotation_record(&self, account: &Account) -> Result<RotationRecord, StoreError> {
        read_record(account, self.secret(account, SecretKind::KeyRotation)?)
    }

    pub fn save_rotation_record(
        &mut self,
        account: &Account,
        record: &RotationRecord,
    ) -> Result<(), StoreError> {
        let sealed = self.seal_record(account, record)?;
        self.db.run(move |client| {
            let mut tx = client.transaction()?;
            sealed.put(&mut tx, now())?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Makes `new` the account's key under its refresh `lease`, with the step that deletes the
    /// key it replaces; a client secret replaced is kept as the previous one until then.
    pub fn commit_rotated_key(
        &mut self,
        lease: &Lease,
        account: &Account,
        new: &RotatedKey<'_>,
    ) -> Result<(), StoreError> {
        let mut sealed = vec![self.seal(account.id, new.kind, new.secret)?];
        if new.kind == SecretKind::ClientSecret {
            let current = self
                .secret(account, SecretKind::ClientSecret)?
                .ok_or_else(|| StoreError::NoClientSecret(account.name.clone()))?;
            sealed.push(self.seal(account.id, SecretKind::PreviousClientSecret, &current)?);
        }
        let record = RotationRecord {
            key_id: Some(new.key_id.to_owned()),
            step: new.replaces.map(|old| RotationStep::Retiring {
                key_id: old.to_owned(),
            }),
        };
        sealed.push(self.seal_record(account, &record)?);
        let (id, name, host) = (account.id, account.name.clone(), self.host.clone());
        let (created_at, is_secret, expires_at) = (
            new.created_at,
            new.kind == SecretKind::ClientSecret,
            new.expires_at,
        );
        let detail = format!("{} replaces {}", new.key_id, new.replaces.unwrap_or("?"));
        self.fenced_commit(Some(lease), account, account.state, None, move |tx, at| {
            Sealed::put_all(&sealed, tx, at)?;
            tx.execute(
                "UPDATE accounts SET key_created_at = $2,
                     client_secret_expires_at =
                         CASE WHEN $3 THEN $4 ELSE client_secret_expires_at END
                 WHERE id = $1",
                &[&id, &created_at, &is_secret, &expires_at],
            )?;
            log_event(tx, &host, &name, "key_rotated", Some(&detail))?;
            Ok(())
        })?;
        Ok(())
    }

    /// Ends a rotation whose old key is gone from the provider (or was never known there).
    pub fn finish_rotation(
        &mut self,
        account: &Account,
        record: &RotationRecord,
    ) -> Result<(), StoreError> {
        let done = RotationRecord {
            key_id: record.key_id.clone(),
            step: None,
        };
        let sealed = self.seal_record(account, &done)?;
        let id = account.id;
        self.db.run(move |client| {
            let mut tx = client.transaction()?;
            sealed.put(&mut tx, now())?;
            tx.execute(
                "DELETE FROM secrets WHERE account_id = $1 AND kind = $2",
                &[&id, &SecretKind::PreviousClientSecret.as_str()],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The accounts the rotation duty looks at: those rotated on a schedule, and those whose
    /// last rotation did not finish.
    pub fn rotation_candidates(&self) -> Result<Vec<RotationDue>, StoreError> {
        let rows: Vec<(String, Option<i64>, bool)> = self.db.run(|client| {
            Ok(client
                .query(
                    "SELECT a.name, COALESCE(a.key_created_at, a.created_at) + a.rotate_every,
                         EXISTS (SELECT 1 FROM secrets s
                                 WHERE s.account_id = a.id AND s.kind = $1) AS rotated
                     FROM accounts a
                     WHERE a.rotate_every IS NOT NULL
                         OR EXISTS (SELECT 1 FROM secrets s
                                    WHERE s.account_id = a.id AND s.kind = $1)",
                    &[&SecretKind::KeyRotation.as_str()],
                )?
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2)))
                .collect())
        })?;
        Ok(due_rotations(rows, |name| {
            self.account(name)
                .and_then(|account| self.rotation_record(&account))
        }))
    }

    /// Rotates account `name`'s key every `every` seconds from now on (`None`: stops).
    pub fn set_rotate_every(&mut self, name: &str, every: Option<i64>) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.db.run(move |client| {
            if client.execute(
                "UPDATE accounts SET rotate_every = $2 WHERE name = $1",
                &[&name, &every],
            )? == 0
            {
                return Err(StoreError::NoSuchAccount(name));
            }
            Ok(())
        })
    }

    /// Writes `event`'s alert for account `name` through the outbox unless one was written for
    /// the same `at` (a due date; 0 for an unfinished rotation). Returns whether it was.
    pub fn alert_once(
        &self,
        name: &str,
        event: AlertEvent,
        at: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let (name, reason) = (name.to_owned(), reason.to_owned());
        self.db.run(move |client| {
            let mut tx = client.transaction()?;
            let first = tx.execute(
                "INSERT INTO deadline_alerts (account_id, deadline, at)
                 SELECT id, $2, $3 FROM accounts WHERE name = $1
                 ON CONFLICT DO NOTHING",
                &[&name, &event.as_str(), &at],
            )? == 1;
            if first {
                super::outbox::insert(&mut tx, &name, event, &reason)?;
            }
            tx.commit()?;
            Ok(first)
        })
    }

    fn seal_record(
        &self,
        account: &Account,
        record: &RotationRecord,
    ) -> Result<Sealed, StoreError> {
        let json = serde_json::to_string(record)
            .map_err(|err| StoreError::BadConfig(account.name.clone(), err.to_string()))?;
        self.seal(
            account.id,
            SecretKind::KeyRotation,
            &SecretString::from(json),
        )
    }
}
