//! Sealing: secrets under the data key (AAD binding account, kind and key version), the data
//! key wrapped by the master key, the settings tags, and rekey.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Store, StoreError, now};
use crate::account::{Account, SecretKind};
use crate::crypto::{self, KEY_LEN, Key, MacKey};
use crate::keys::{KeySource, MasterKey, PassphraseFile};
use crate::secret::SecretString;

impl Store {
    /// The secret `kind` of `account`, opened; `None` when the account has none of that kind.
    pub fn secret(
        &self,
        account: &Account,
        kind: SecretKind,
    ) -> Result<Option<SecretString>, StoreError> {
        open_secret(&self.conn, &self.data_key, account, kind)
    }

    /// Where a rekey that did not commit was putting its new master key, if one was begun since
    /// the last commit (`vault doctor` looks for the key file it may have left).
    pub fn pending_rekey(&self) -> Option<KeySource> {
        let record: String = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'rekey_pending'",
                [],
                |row| row.get(0),
            )
            .ok()?;
        KeySource::from_record(&record).ok()
    }

    /// Whether `account` holds a secret of `kind` (nothing is opened).
    pub fn has_secret(&self, account: &Account, kind: SecretKind) -> Result<bool, StoreError> {
        secret_exists(&self.conn, account, kind)
    }

    /// Rotates the keys: a new data key (next version) re-seals every secret, wrapped by the new
    /// master key from `new_source` (a new passphrase read from `passphrase`, else typed), all in
    /// one transaction. Until it commits, the old master key keeps working; a crash leaves the
    /// vault as it was.
    pub fn rekey(
        &mut self,
        new_source: KeySource,
        passphrase: PassphraseFile<'_>,
    ) -> Result<(), StoreError> {
        let vault_id = self.vault_id()?;
        let new_version = self.key_version + 1;
        // Recorded before the new key exists, so that `vault doctor` can name a key file a crash
        // left behind, which opens nothing.
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('rekey_pending', ?1)",
            [new_source.to_record()],
        )?;
        let new_master = new_source.load_or_create(&vault_id, new_version, passphrase)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM meta WHERE key = 'rekey_pending'", [])?;
        let (new_key, new_settings_key) =
            install_data_key(&tx, &vault_id, &new_master, &new_source, new_version)?;
        sign_all_settings(&tx, &new_settings_key)?;
        let rows: Vec<(i64, String, i64, Vec<u8>)> = {
            let mut stmt =
                tx.prepare("SELECT account_id, kind, key_version, sealed FROM secrets")?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (account_id, kind, version, sealed) in rows {
            let plain = self
                .data_key
                .open(
                    &sealed,
                    secret_aad_text(account_id, &kind, version).as_bytes(),
                )
                .map_err(|_| StoreError::SecretTampered {
                    account: format!("id {account_id}"),
                    kind: "secret",
                })?;
            let resealed = new_key.seal(
                plain.expose(),
                secret_aad_text(account_id, &kind, new_version).as_bytes(),
            )?;
            tx.execute(
                "UPDATE secrets SET key_version = ?3, sealed = ?4 WHERE account_id = ?1 AND kind = ?2",
                params![account_id, kind, new_version, resealed],
            )?;
        }
        tx.commit()?;
        self.data_key = new_key;
        self.settings_key = new_settings_key;
        self.key_version = new_version;
        self.key_source = new_source;
        Ok(())
    }

    /// A vault made before settings were signed gets every account signed once, at its first
    /// open with the master key; from then on (`meta.settings_signed`) an unsigned account is
    /// as refused as a wrongly signed one, so clearing a tag cannot get settings re-signed.
    pub(super) fn sign_settings_once(&mut self) -> Result<(), StoreError> {
        let signed: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'settings_signed')",
            [],
            |row| row.get(0),
        )?;
        if signed {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        sign_all_settings(&tx, &self.settings_key)?;
        mark_settings_signed(&tx)?;
        tx.commit()?;
        Ok(())
    }
}

/// Whether `account` holds a secret of `kind`, read through `conn`; nothing is opened.
pub(super) fn secret_exists(
    conn: &rusqlite::Connection,
    account: &Account,
    kind: SecretKind,
) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM secrets WHERE account_id = ?1 AND kind = ?2)",
        params![account.id, kind.as_str()],
        |row| row.get(0),
    )?)
}

/// The secret `kind` of `account` read through `conn` (the store's, or a transaction's).
pub(super) fn open_secret(
    conn: &rusqlite::Connection,
    key: &Key,
    account: &Account,
    kind: SecretKind,
) -> Result<Option<SecretString>, StoreError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT key_version, sealed FROM secrets WHERE account_id = ?1 AND kind = ?2",
            params![account.id, kind.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let Some((version, sealed)) = row else {
        return Ok(None);
    };
    let tampered = || StoreError::SecretTampered {
        account: account.name.clone(),
        kind: kind.as_str(),
    };
    let plain = key
        .open(&sealed, secret_aad(account.id, kind, version).as_bytes())
        .map_err(|_| tampered())?;
    plain.into_string().map(Some).ok_or_else(tampered)
}

pub(super) fn put_secret(
    tx: &rusqlite::Transaction<'_>,
    key: &Key,
    key_version: i64,
    account_id: i64,
    kind: SecretKind,
    value: &SecretString,
) -> Result<(), StoreError> {
    let sealed = key.seal(
        value.expose().as_bytes(),
        secret_aad(account_id, kind, key_version).as_bytes(),
    )?;
    tx.execute(
        "INSERT INTO secrets (account_id, kind, key_version, sealed, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (account_id, kind) DO UPDATE SET
             key_version = excluded.key_version, sealed = excluded.sealed, updated_at = excluded.updated_at",
        params![account_id, kind.as_str(), key_version, sealed, now()],
    )?;
    Ok(())
}

/// What an account's settings tag covers: its row id, its name and its settings JSON as
/// stored, so settings cannot be edited, swapped between accounts or renamed.
pub(super) fn settings_message(id: i64, name: &str, config_json: &str) -> Vec<u8> {
    format!("tokenvault account settings\0{id}\0{name}\0{config_json}").into_bytes()
}

pub(super) fn sign_settings(
    tx: &rusqlite::Transaction<'_>,
    key: &MacKey,
    id: i64,
    name: &str,
    config_json: &str,
) -> Result<(), StoreError> {
    let tag = key.sign(&settings_message(id, name, config_json));
    tx.execute(
        "UPDATE accounts SET config_mac = ?2 WHERE id = ?1",
        params![id, tag],
    )?;
    Ok(())
}

/// Signs every account's settings with `key` (a new vault's first open, and rekey).
fn sign_all_settings(tx: &rusqlite::Transaction<'_>, key: &MacKey) -> Result<(), StoreError> {
    let rows: Vec<(i64, String, String)> = {
        let mut stmt = tx.prepare("SELECT id, name, config FROM accounts")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, name, config) in rows {
        sign_settings(tx, key, id, &name, &config)?;
    }
    Ok(())
}

pub(super) fn mark_settings_signed(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('settings_signed', 1)",
        [],
    )?;
    Ok(())
}

pub(super) fn secret_aad(account_id: i64, kind: SecretKind, key_version: i64) -> String {
    secret_aad_text(account_id, kind.as_str(), key_version)
}

pub(super) fn secret_aad_text(account_id: i64, kind: &str, key_version: i64) -> String {
    format!("tokenvault secret|account={account_id}|kind={kind}|key={key_version}")
}

/// Makes a new random data key the vault's, as `version`: wrapped by `master` and recorded in
/// `meta` with the master key's source, inside the caller's transaction (`vault init`, `rekey`).
pub(super) fn install_data_key(
    tx: &rusqlite::Transaction<'_>,
    vault_id: &str,
    master: &MasterKey,
    key_source: &KeySource,
    version: i64,
) -> Result<(Key, MacKey), StoreError> {
    let data_key = crypto::random_bytes::<KEY_LEN>()?;
    let wrapped =
        Key::from_bytes(master).seal(data_key.expose(), wrap_aad(vault_id, version).as_bytes())?;
    for (key, value) in [
        (
            "key_source",
            rusqlite::types::Value::Text(key_source.to_record()),
        ),
        ("key_version", rusqlite::types::Value::Integer(version)),
        ("wrapped_data_key", rusqlite::types::Value::Blob(wrapped)),
    ] {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
    }
    Ok((Key::from_bytes(&data_key), MacKey::derive(&data_key)))
}

pub(super) fn wrap_aad(vault_id: &str, key_version: i64) -> String {
    format!("tokenvault data key|vault={vault_id}|key={key_version}")
}
