//! Rotating an account's client secret on a fleet, as on one host (store::client_secrets): the
//! new secret becomes the newest, the one in use is kept as the previous until retired.

use super::{PgStore, Sealed, log_event};
use crate::account::SecretKind;
use crate::crypto::Key;
use crate::secret::SecretString;
use crate::store::sealing::secret_aad;
use crate::store::{SecretRotation, StoreError, now};

impl PgStore {
    /// Makes `new` the client secret of account `name`, expiring at `expires_at` if known, in
    /// one transaction: the secret in use becomes the previous one unless a rotation is under
    /// way already.
    pub fn set_client_secret(
        &mut self,
        name: &str,
        new: &SecretString,
        expires_at: Option<i64>,
    ) -> Result<SecretRotation, StoreError> {
        let account = self.account(name)?;
        let newest = self.seal(account.id, SecretKind::ClientSecret, new)?;
        let (raw, version, host) = (
            self.raw_data_key.clone(),
            self.key_version,
            self.host.clone(),
        );
        let (id, name) = (account.id, account.name);
        self.db.run(move |client| {
            let mut tx = client.transaction()?;
            let kinds = [
                SecretKind::ClientSecret.as_str(),
                SecretKind::PreviousClientSecret.as_str(),
            ];
            let rows = tx.query(
                "SELECT kind, key_version, sealed FROM secrets
                 WHERE account_id = $1 AND kind = ANY($2) FOR UPDATE",
                &[&id, &kinds.as_slice()],
            )?;
            let stored = |kind: SecretKind| {
                rows.iter()
                    .find(|row| row.get::<_, &str>(0) == kind.as_str())
            };
            let current = stored(SecretKind::ClientSecret)
                .ok_or_else(|| StoreError::NoClientSecret(name.clone()))?;
            let rotation = if stored(SecretKind::PreviousClientSecret).is_some() {
                SecretRotation::NewestReplaced
            } else {
                // The secret in use, moved to the previous kind: opened and sealed for it.
                let tampered = || StoreError::SecretTampered {
                    account: name.clone(),
                    kind: SecretKind::ClientSecret.as_str(),
                };
                let key = Key::from_bytes(&raw);
                let plain = key
                    .open(
                        &current.get::<_, Vec<u8>>(2),
                        secret_aad(id, SecretKind::ClientSecret, current.get(1)).as_bytes(),
                    )
                    .map_err(|_| tampered())?;
                let kind = SecretKind::PreviousClientSecret;
                let blob = key.seal(plain.expose(), secret_aad(id, kind, version).as_bytes())?;
                Sealed {
                    account_id: id,
                    kind,
                    blob,
                    version,
                }
                .put(&mut tx, now())?;
                SecretRotation::Started
            };
            newest.put(&mut tx, now())?;
            tx.execute(
                "UPDATE accounts SET client_secret_expires_at = $2 WHERE id = $1",
                &[&id, &expires_at],
            )?;
            log_event(&mut tx, &host, &name, "client_secret_set", None)?;
            tx.commit()?;
            Ok(rotation)
        })
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
        let id = account.id;
        self.db.run(move |client| {
            client.execute(
                "UPDATE accounts SET client_secret_expires_at = $2 WHERE id = $1",
                &[&id, &expires_at],
            )?;
            Ok(())
        })
    }

    /// Deletes the previous client secret of account `name`: the rotation is over.
    pub fn retire_previous_client_secret(&mut self, name: &str) -> Result<(), StoreError> {
        let account = self.account(name)?;
        let (id, name, host) = (account.id, account.name, self.host.clone());
        self.db.run(move |client| {
            let mut tx = client.transaction()?;
            let deleted = tx.execute(
                "DELETE FROM secrets WHERE account_id = $1 AND kind = $2",
                &[&id, &SecretKind::PreviousClientSecret.as_str()],
            )?;
            if deleted == 0 {
                return Err(StoreError::NoPreviousClientSecret(name));
            }
            log_event(&mut tx, &host, &name, "client_secret_retired", None)?;
            tx.commit()?;
            Ok(())
        })
    }
}
