//! The vault's SQLite file: accounts, sealed secrets and events.
//!
//! Secrets are sealed with the vault's data key; the data key is stored wrapped (sealed) by the
//! master key. Every secret's AAD names its account id, its kind and the data key's version, so a
//! blob copied to another row or kind fails to open.

mod lock;
mod schema;

pub use lock::AccountLock;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use thiserror::Error;

use crate::account::{
    Account, AccountConfig, AccountState, AccountSummary, Principal, SecretKind, Transition,
};
use crate::crypto::{self, CryptoError, KEY_LEN, Key, MacKey};
use crate::keys::{KeyError, KeySource, MasterKey};
use crate::secret::{Secret, SecretString};

pub const DB_FILE: &str = "vault.db";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("no vault at {0}. Create one with: vault init")]
    NoVault(PathBuf),
    #[error("a vault already exists at {0}; nothing was changed")]
    VaultExists(PathBuf),
    #[error(
        "{path} is damaged or is not a tokenvault database ({reason}). Restore it from a backup; tokenvault did not change it"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the vault at {0} was written by a newer tokenvault (schema {1}); upgrade tokenvault to use it"
    )]
    TooNew(PathBuf, i64),
    #[error(
        "the master key from {0} does not open this vault. Give the key the vault was created with (--key-file, VAULT_MASTER_KEY or the OS keyring)"
    )]
    WrongMasterKey(String),
    #[error("no account named {0:?}. See the accounts with: vault list")]
    NoSuchAccount(String),
    #[error(
        "an account named {0:?} already exists. Pick another name, or remove it first: vault remove {0}"
    )]
    AccountExists(String),
    #[error(
        "the secret {kind} of account {account:?} failed to open: it was altered or moved from another row"
    )]
    SecretTampered { account: String, kind: &'static str },
    #[error(
        "the stored settings of account {0:?} (where and how its secrets are sent) were changed outside tokenvault; nothing was sent anywhere. Restore the vault from a backup, or remove the account and add it again: vault remove {0}"
    )]
    SettingsTampered(String),
    #[error("the stored settings of account {0:?} are unreadable ({1})")]
    BadConfig(String, String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(
        "refusing the vault directory {path}: {problem}. The vault must live in a directory only you can write to: fix it (chown/chmod 700) or choose another with --vault"
    )]
    UnsafeDir {
        path: PathBuf,
        problem: crate::files::DirProblem,
    },
    #[error("cannot create the vault directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "account {0:?} was changed by another vault command (vault login?) while it was being refreshed; the newer tokens were kept. Try again"
    )]
    Superseded(String),
    #[error("vault database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// An account to store, with its secrets and its first tokens.
pub struct NewAccount<'a> {
    pub name: &'a str,
    pub config: &'a AccountConfig,
    pub secrets: &'a [(SecretKind, &'a SecretString)],
    pub tokens: &'a TokenUpdate<'a>,
    pub validation_schedule: Option<&'a str>,
    pub refresh_before: Option<u64>,
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

pub struct Store {
    dir: PathBuf,
    conn: Connection,
    data_key: Key,
    /// Vouches for each account's plaintext settings (`accounts.config_mac`).
    settings_key: MacKey,
    key_version: i64,
    key_source: KeySource,
}

fn now() -> i64 {
    crate::clock::now_unix()
}

impl Store {
    pub fn db_path(dir: &Path) -> PathBuf {
        dir.join(DB_FILE)
    }

    /// Creates a new vault in `dir`, its master key at `key_source`.
    pub fn init(dir: &Path, key_source: KeySource) -> Result<Store, StoreError> {
        let path = Self::db_path(dir);
        if path.exists() {
            return Err(StoreError::VaultExists(dir.to_owned()));
        }
        create_private_dir(dir)?;
        let dir = &trusted_dir(dir)?;
        let path = Self::db_path(dir);
        let vault_id = hex(crypto::random_bytes::<16>()?.expose());
        let master = key_source.load_or_create(&vault_id, 1)?;
        let result = Self::create_db(dir, &vault_id, &master, key_source.clone());
        if result.is_err() {
            // Leave nothing half-made: no database without its key, no orphaned keyring entry.
            let _ = std::fs::remove_file(&path);
            if key_source == KeySource::Keyring {
                crate::keys::forget_keyring_entry(&vault_id, 1);
            }
        }
        result
    }

    fn create_db(
        dir: &Path,
        vault_id: &str,
        master: &MasterKey,
        key_source: KeySource,
    ) -> Result<Store, StoreError> {
        let path = Self::db_path(dir);
        // 0600 from the start, whatever the umask: SQLite gives `-wal` and `-shm` the same mode.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::Dir {
                path: path.clone(),
                source,
            })?;
        let mut conn = connect(&path, OpenFlags::empty())?;
        schema::migrate(&mut conn, &path, true)?;
        let key_version = 1;
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('vault_id', ?1)",
            params![vault_id],
        )?;
        let (data_key, settings_key) =
            install_data_key(&tx, vault_id, master, &key_source, key_version)?;
        mark_settings_signed(&tx)?;
        tx.commit()?;
        Ok(Store {
            dir: dir.to_owned(),
            conn,
            data_key,
            settings_key,
            key_version,
            key_source,
        })
    }

    /// Opens the vault in `dir`. The master key comes from `key_override` when given, else from
    /// the source recorded at `vault init`.
    pub fn open(dir: &Path, key_override: Option<KeySource>) -> Result<Store, StoreError> {
        if !Self::db_path(dir).exists() {
            return Err(StoreError::NoVault(dir.to_owned()));
        }
        let dir = &trusted_dir(dir)?;
        let path = Self::db_path(dir);
        let mut conn = connect(&path, OpenFlags::empty())?;
        schema::migrate(&mut conn, &path, false)?;
        let meta = |key: &str| -> Result<rusqlite::types::Value, StoreError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .map_err(|err| corrupt(&path, err))
        };
        let (vault_id, recorded, key_version, wrapped) = match (
            meta("vault_id")?,
            meta("key_source")?,
            meta("key_version")?,
            meta("wrapped_data_key")?,
        ) {
            (
                rusqlite::types::Value::Text(id),
                rusqlite::types::Value::Text(source),
                rusqlite::types::Value::Integer(version),
                rusqlite::types::Value::Blob(wrapped),
            ) => (id, source, version, wrapped),
            _ => return Err(corrupt(&path, "malformed meta table")),
        };
        let key_source = key_override.unwrap_or_else(|| KeySource::from_record(&recorded));
        let master = key_source.load(&vault_id, key_version)?;
        let data_key = Key::from_bytes(&master)
            .open(&wrapped, wrap_aad(&vault_id, key_version).as_bytes())
            .map_err(|_| StoreError::WrongMasterKey(key_source.describe()))?;
        let mut raw = Secret::new([0u8; KEY_LEN]);
        if data_key.expose().len() != KEY_LEN {
            return Err(corrupt(&path, "data key has the wrong length"));
        }
        raw.expose_mut().copy_from_slice(data_key.expose());
        let mut store = Store {
            dir: dir.to_owned(),
            conn,
            data_key: Key::from_bytes(&raw),
            settings_key: MacKey::derive(&raw),
            key_version,
            key_source,
        };
        store.sign_settings_once()?;
        Ok(store)
    }

    /// A vault made before settings were signed gets every account signed once, at its first
    /// open with the master key; from then on (`meta.settings_signed`) an unsigned account is
    /// as refused as a wrongly signed one, so clearing a tag cannot get settings re-signed.
    fn sign_settings_once(&mut self) -> Result<(), StoreError> {
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

    /// The version of the data key; each rekey adds one.
    pub fn key_version(&self) -> i64 {
        self.key_version
    }

    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the cross-process lock of account `name` (held until the guard drops).
    pub fn lock_account(&self, name: &str) -> Result<AccountLock, StoreError> {
        AccountLock::acquire(&self.dir, name)
    }

    /// Stores a new account and its secrets in one transaction: all of it or nothing.
    pub fn insert_account(
        &mut self,
        name: &str,
        config: &AccountConfig,
        secrets: &[(SecretKind, &SecretString)],
        tokens: &TokenUpdate<'_>,
    ) -> Result<(), StoreError> {
        self.insert_accounts(&[NewAccount {
            name,
            config,
            secrets,
            tokens,
            validation_schedule: None,
            refresh_before: None,
        }])
    }

    /// Stores new accounts in one transaction: all of them, or none (a taken name, a failed
    /// write) — what `vault import` promises.
    pub fn insert_accounts(&mut self, accounts: &[NewAccount<'_>]) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for account in accounts {
            insert_in(
                &tx,
                &self.data_key,
                &self.settings_key,
                self.key_version,
                account,
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn account(&self, name: &str) -> Result<Account, StoreError> {
        self.conn
            .query_row(
                &format!("{ACCOUNT_COLUMNS} WHERE name = ?1"),
                [name],
                |row| read_account(row, &self.settings_key),
            )
            .optional()?
            .ok_or_else(|| StoreError::NoSuchAccount(name.to_owned()))?
    }

    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("{ACCOUNT_COLUMNS} ORDER BY name"))?;
        let rows = stmt.query_map([], |row| read_account(row, &self.settings_key))?;
        rows.map(|row| row?).collect()
    }

    pub fn remove_account(&mut self, name: &str) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM secrets WHERE account_id = (SELECT id FROM accounts WHERE name = ?1)",
            [name],
        )?;
        if tx.execute("DELETE FROM accounts WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NoSuchAccount(name.to_owned()));
        }
        log_event(&tx, name, "removed", None)?;
        tx.commit()?;
        Ok(())
    }

    /// The secret `kind` of `account`, opened; `None` when the account has none of that kind.
    pub fn secret(
        &self,
        account: &Account,
        kind: SecretKind,
    ) -> Result<Option<SecretString>, StoreError> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
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
        let plain = self
            .data_key
            .open(&sealed, secret_aad(account.id, kind, version).as_bytes())
            .map_err(|_| tampered())?;
        plain.into_string().map(Some).ok_or_else(tampered)
    }

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

/// The seam through which a refresh reads and commits: SQLite here; the fleet's PostgreSQL
/// store is the second implementation (a lease row instead of a file lock, the same fencing).
pub trait RefreshStore {
    /// Held from the decision to call the provider until the outcome is committed; commits ask
    /// for it, so nothing is committed for a call made without it.
    type Guard: Send + 'static;

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
        state: AccountState,
        reason: &str,
    ) -> Result<Option<Transition>, StoreError>;
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
        state: AccountState,
        reason: &str,
    ) -> Result<Option<Transition>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        advance_generation(&tx, account, Fence::Generation)?;
        let transition = set_state(&tx, account, state, Some(reason))?;
        tx.commit()?;
        Ok(transition)
    }
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

impl Store {
    /// Lets `principal` fetch account `name`'s access tokens (`allowed`), or stops it.
    /// Returns whether anything changed.
    pub fn set_grant(
        &mut self,
        name: &str,
        principal: Principal,
        allowed: bool,
    ) -> Result<bool, StoreError> {
        let account = self.account(name)?;
        let (sql, event) = if allowed {
            (
                "INSERT OR IGNORE INTO grants (account_id, kind, id) VALUES (?1, ?2, ?3)",
                "granted",
            )
        } else {
            (
                "DELETE FROM grants WHERE account_id = ?1 AND kind = ?2 AND id = ?3",
                "grant_revoked",
            )
        };
        let tx = self.conn.transaction()?;
        let changed = tx.execute(sql, params![account.id, principal.kind(), principal.id()])? == 1;
        if changed {
            let detail = format!("{}={}", principal.kind(), principal.id());
            log_event(&tx, name, event, Some(&detail))?;
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Records whose grant the account holds (after a login by another, allowed, user), with
    /// its settings signed anew.
    pub fn set_identity(
        &mut self,
        account: &Account,
        identity: Option<&crate::oauth::identity::Identity>,
    ) -> Result<(), StoreError> {
        let mut config = account.config.clone();
        config.identity = identity.cloned();
        let config_json = serde_json::to_string(&config)
            .map_err(|err| StoreError::BadConfig(account.name.clone(), err.to_string()))?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE accounts SET config = ?2 WHERE id = ?1",
            params![account.id, config_json],
        )?;
        sign_settings(
            &tx,
            &self.settings_key,
            account.id,
            &account.name,
            &config_json,
        )?;
        let shown = identity.map(|identity| identity.shown().to_owned());
        log_event(&tx, &account.name, "identity", shown.as_deref())?;
        tx.commit()?;
        Ok(())
    }

    /// Sets (or, with `None`, clears) an account's own validation schedule.
    pub fn set_validation_schedule(
        &mut self,
        name: &str,
        schedule: Option<&str>,
    ) -> Result<(), StoreError> {
        self.set_column(name, "validation_schedule", &schedule)
    }

    /// Sets (or, with `None`, clears) an account's own refresh-ahead margin in seconds.
    pub fn set_refresh_before(
        &mut self,
        name: &str,
        seconds: Option<u64>,
    ) -> Result<(), StoreError> {
        self.set_column(name, "refresh_before", &seconds)
    }

    /// One per-account setting; `column` is one of the fixed names above, never user input.
    fn set_column(
        &mut self,
        name: &str,
        column: &'static str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            &format!("UPDATE accounts SET {column} = ?2 WHERE name = ?1"),
            params![name, value],
        )?;
        if changed == 0 {
            return Err(StoreError::NoSuchAccount(name.to_owned()));
        }
        Ok(())
    }

    /// Every grant, as (account name, principal).
    pub fn grants(&self) -> Result<Vec<(String, Principal)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT a.name, g.kind, g.id FROM grants g JOIN accounts a ON a.id = g.account_id ORDER BY a.name",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, u32>(2)?,
            ))
        })?;
        let mut grants = Vec::new();
        for row in rows {
            let (name, kind, id) = row?;
            if let Some(principal) = Principal::from_parts(&kind, id) {
                grants.push((name, principal));
            }
        }
        Ok(grants)
    }

    /// Every account's summary, without parsing settings (the daemon loads 10,000s of these).
    pub fn summaries(&self) -> Result<Vec<AccountSummary>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, state, access_expires_at, last_refresh_at, last_validated_at,
                    validation_schedule, refresh_before,
                    (SELECT group_concat(value, ' ') FROM json_each(config, '$.scopes'))
             FROM accounts ORDER BY name",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                (row.get(2)?, row.get(3)?, row.get(4)?),
                (
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, Option<u64>>(6)?,
                ),
                row.get::<_, Option<String>>(7)?,
            ))
        })?;
        let mut summaries = Vec::new();
        for row in rows {
            let (name, state, times, (validation_schedule, refresh_before), scope) = row?;
            let (access_expires_at, last_refresh_at, last_validated_at) = times;
            let state = AccountState::parse(&state).ok_or_else(|| {
                StoreError::BadConfig(name.clone(), format!("unknown state {state:?}"))
            })?;
            summaries.push(AccountSummary {
                name,
                state,
                access_expires_at,
                last_refresh_at,
                last_validated_at,
                validation_schedule,
                refresh_before,
                scope: scope.unwrap_or_default(),
            });
        }
        Ok(summaries)
    }

    /// The vault's random id (names its keyring entry and binds the wrapped data key).
    pub fn vault_id(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'vault_id'", [], |row| {
                row.get(0)
            })?)
    }

    /// Rotates the keys: a new data key (next version) re-seals every secret, wrapped by the new
    /// master key from `new_source`, all in one transaction. Until it commits, the old master key
    /// keeps working; a crash leaves the vault as it was.
    pub fn rekey(&mut self, new_source: KeySource) -> Result<(), StoreError> {
        let vault_id = self.vault_id()?;
        let new_version = self.key_version + 1;
        let new_master = new_source.load_or_create(&vault_id, new_version)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
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

    /// Moves everything committed from the WAL into `vault.db` and empties the WAL. After a
    /// rekey the new key's rows otherwise live only in the WAL, and `vault.db` alone (a file
    /// backup taken then) would still open with the old master key. False when a reader (a
    /// running daemon mid-read) kept it from finishing.
    pub fn checkpoint(&self) -> bool {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
            .is_ok_and(|busy| busy == 0)
    }

    /// Every announced refresh-token deadline, as (account, deadline).
    pub fn refresh_deadlines(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, refresh_expires_at FROM accounts WHERE refresh_expires_at IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The accounts whose refresh token has an announced deadline before `until` (and after
    /// now) that has not been alerted yet, as (name, deadline); each is recorded as an
    /// `expiring` event in the same transaction, so it is alerted once, across restarts too.
    pub fn take_refresh_deadlines(&mut self, until: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let due: Vec<(String, i64)> = {
            let mut stmt = tx.prepare(
                "SELECT a.name, a.refresh_expires_at FROM accounts a
                 WHERE a.refresh_expires_at > ?1 AND a.refresh_expires_at <= ?2 AND a.state != ?3
                   AND NOT EXISTS (SELECT 1 FROM events e WHERE e.account = a.name
                       AND e.event = 'expiring' AND e.detail = CAST(a.refresh_expires_at AS TEXT))",
            )?;
            let rows = stmt.query_map(
                params![now(), until, AccountState::ReauthRequired.as_str()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            rows.collect::<Result<_, _>>()?
        };
        for (name, at) in &due {
            log_event(&tx, name, "expiring", Some(&at.to_string()))?;
        }
        tx.commit()?;
        Ok(due)
    }

    /// Changes whenever another connection (another `vault` process) commits to the vault.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "data_version", |row| row.get(0))?)
    }
}

const ACCOUNT_COLUMNS: &str = "SELECT id, name, config, state, created_at, last_refresh_at, \
     last_validated_at, last_error, access_expires_at, refresh_expires_at, validation_schedule, \
     refresh_before, config_mac, generation FROM accounts";

/// One row of `ACCOUNT_COLUMNS`; its settings are used only when their tag vouches for them.
fn read_account(
    row: &rusqlite::Row<'_>,
    settings_key: &MacKey,
) -> rusqlite::Result<Result<Account, StoreError>> {
    let id: i64 = row.get(0)?;
    let name: String = row.get(1)?;
    let config: String = row.get(2)?;
    let state: String = row.get(3)?;
    let tag: Option<Vec<u8>> = row.get(12)?;
    let vouched =
        tag.is_some_and(|tag| settings_key.verify(&settings_message(id, &name, &config), &tag));
    if !vouched {
        return Ok(Err(StoreError::SettingsTampered(name)));
    }
    let config = match serde_json::from_str::<AccountConfig>(&config) {
        Ok(config) => config,
        Err(err) => return Ok(Err(StoreError::BadConfig(name, err.to_string()))),
    };
    let Some(state) = AccountState::parse(&state) else {
        return Ok(Err(StoreError::BadConfig(
            name,
            format!("unknown state {state:?}"),
        )));
    };
    Ok(Ok(Account {
        id,
        name,
        config,
        state,
        created_at: row.get(4)?,
        last_refresh_at: row.get(5)?,
        last_validated_at: row.get(6)?,
        last_error: row.get(7)?,
        access_expires_at: row.get(8)?,
        refresh_expires_at: row.get(9)?,
        validation_schedule: row.get(10)?,
        refresh_before: row.get(11)?,
        generation: row.get(13)?,
    }))
}

fn insert_in(
    tx: &rusqlite::Transaction<'_>,
    key: &Key,
    settings_key: &MacKey,
    key_version: i64,
    new: &NewAccount<'_>,
) -> Result<(), StoreError> {
    let name = new.name;
    let config_json = serde_json::to_string(new.config)
        .map_err(|err| StoreError::BadConfig(name.into(), err.to_string()))?;
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM accounts WHERE name = ?1)",
        [name],
        |row| row.get(0),
    )?;
    if exists {
        return Err(StoreError::AccountExists(name.to_owned()));
    }
    tx.execute(
        "INSERT INTO accounts (name, config, state, created_at, validation_schedule, refresh_before)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            name,
            config_json,
            AccountState::Active.as_str(),
            now(),
            new.validation_schedule,
            new.refresh_before
        ],
    )?;
    let id = tx.last_insert_rowid();
    sign_settings(tx, settings_key, id, name, &config_json)?;
    for (kind, value) in new.secrets {
        put_secret(tx, key, key_version, id, *kind, value)?;
    }
    apply_token_update(tx, key, key_version, id, new.tokens)?;
    log_event(tx, name, "added", Some(new.config.grant.as_str()))?;
    Ok(())
}

fn apply_token_update(
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

fn put_secret(
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

fn log_event(
    tx: &rusqlite::Transaction<'_>,
    account: &str,
    event: &str,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO events (at, account, event, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now(), account, event, detail],
    )?;
    Ok(())
}

/// What an account's settings tag covers: its row id, its name and its settings JSON as
/// stored, so settings cannot be edited, swapped between accounts or renamed.
fn settings_message(id: i64, name: &str, config_json: &str) -> Vec<u8> {
    format!("tokenvault account settings\0{id}\0{name}\0{config_json}").into_bytes()
}

fn sign_settings(
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

fn mark_settings_signed(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('settings_signed', 1)",
        [],
    )?;
    Ok(())
}

fn secret_aad(account_id: i64, kind: SecretKind, key_version: i64) -> String {
    secret_aad_text(account_id, kind.as_str(), key_version)
}

fn secret_aad_text(account_id: i64, kind: &str, key_version: i64) -> String {
    format!("tokenvault secret|account={account_id}|kind={kind}|key={key_version}")
}

/// Makes a new random data key the vault's, as `version`: wrapped by `master` and recorded in
/// `meta` with the master key's source, inside the caller's transaction (`vault init`, `rekey`).
fn install_data_key(
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

fn wrap_aad(vault_id: &str, key_version: i64) -> String {
    format!("tokenvault data key|vault={vault_id}|key={key_version}")
}

/// The vault directory, checked to be the user's own and closed to others' writes (at every
/// open), as a canonical path: SQLite then refuses a symlink at `vault.db` (`NOFOLLOW`; it opens
/// its `-wal` and `-shm` with O_NOFOLLOW itself), and nothing else resolves one later.
fn trusted_dir(dir: &Path) -> Result<PathBuf, StoreError> {
    let unsafe_dir = |problem| StoreError::UnsafeDir {
        path: dir.to_owned(),
        problem,
    };
    crate::files::check_private_dir(dir, rustix::process::geteuid().as_raw())
        .map_err(unsafe_dir)?;
    std::fs::canonicalize(dir).map_err(|source| {
        unsafe_dir(crate::files::DirProblem::Io {
            path: dir.display().to_string(),
            source,
        })
    })
}

fn connect(path: &Path, extra: OpenFlags) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW
        | extra;
    let conn = Connection::open_with_flags(path, flags).map_err(|err| corrupt(path, err))?;
    // WAL for concurrent readers; FULL so a committed rotated refresh token survives power loss.
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // A small page cache: the daemon keeps what it needs in its own structures.
    conn.pragma_update(None, "journal_mode", "WAL")
        .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
        .and_then(|()| conn.pragma_update(None, "cache_size", -512))
        .and_then(|()| conn.pragma_update(None, "foreign_keys", "ON"))
        // Freed pages (a removed account's sealed secrets, a rekey's old wrapped key) are zeroed.
        .and_then(|()| conn.pragma_update(None, "secure_delete", "ON"))
        .map_err(|err| corrupt(path, err))?;
    Ok(conn)
}

fn corrupt(path: &Path, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    crate::files::create_private_dir(dir).map_err(|source| StoreError::Dir {
        path: dir.to_owned(),
        source,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
