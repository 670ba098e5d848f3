//! The vault's SQLite file: accounts, sealed secrets and events.
//!
//! By concern: `accounts` (rows, settings, grants), `sealing` (secrets, the data key, settings
//! tags, rekey), `commits` (what a refresh or login commits, fenced on the account's
//! generation, and the `RefreshStore` seam a second backend implements), `events`, `schema`
//! (migrations), `lock` (the per-account refresh lock); opening and creating the file here.
//!
//! Secrets are sealed with the vault's data key; the data key is stored wrapped (sealed) by the
//! master key. Every secret's AAD names its account id, its kind and the data key's version, so a
//! blob copied to another row or kind fails to open.

mod accounts;
mod any;
mod client_secrets;
mod commits;
mod events;
mod lock;
mod postgres;
mod rotations;
mod schema;
mod sealing;

pub use accounts::{NewAccount, SummaryRow};
pub use any::{AnyGuard, AnyStore, RotationGuard, SharedStore};
pub use client_secrets::SecretRotation;
pub use commits::{Failure, RefreshGuard, RefreshStore, TokenUpdate};
pub use lock::{AccountLock, LOCK_FILE, Purpose};
pub use postgres::{
    ChangeFeed, FleetDb, FleetStatus, Heard, JoinCode, Lease, NamedGrant, PgStore, RotationLease,
};
pub use rotations::{RotatedKey, RotationDue, RotationRecord, RotationStep};

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, params};
use thiserror::Error;

use crate::crypto::{self, CryptoError, KEY_LEN, Key, MacKey};
use crate::keys::{KeyError, KeySource, MasterKey, PassphraseFile, Unlock};
use crate::secret::Secret;
use sealing::{install_data_key, mark_settings_signed, wrap_aad};

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
        "the master key from {0} does not open this vault. Give the key or passphrase the vault was created with (--key-file, --key-passphrase-file, VAULT_MASTER_KEY or the OS keyring)"
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
    #[error(
        "account {0:?} has no client secret to replace (a public client, or a service account); nothing was changed"
    )]
    NoClientSecret(String),
    #[error("account {0:?} has no previous client secret to retire; nothing was changed")]
    NoPreviousClientSecret(String),
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
    #[error(
        "the fleet database: {0}. Check [fleet] database in config.toml (or VAULT_DATABASE_URL) and that PostgreSQL is reachable"
    )]
    Database(String),
    #[error(
        "the connection to the fleet database was lost ({0}). Check that PostgreSQL is reachable; try again"
    )]
    DatabaseLost(String),
    #[error(
        "the fleet database's certificate is not one this host trusts ({0}): name the CA it chains to in [fleet] ca_file (or sslrootcert= in the address) — managed databases publish theirs — and use the host name the certificate is for"
    )]
    UntrustedCertificate(String),
    #[error("the PostgreSQL password file: {0}")]
    PasswordFile(String),
    #[error(
        "no valid access token for account {account:?} right now: the provider failed on a host of the fleet, which waits {seconds} s before it calls it again. Try again later"
    )]
    Paused { account: String, seconds: u64 },
    #[error(
        "account {0:?} is being refreshed by another host of the fleet (or was, by one that stopped: its lease runs out within a minute). Try again in a moment"
    )]
    LeaseHeld(String),
    #[error("the fleet database holds no tokenvault fleet. Create one with: vault fleet init")]
    NotAFleet,
    #[error(
        "host {0:?} is not enrolled in this fleet. Enroll it: vault fleet join (on it), then vault fleet admit {0} (on an enrolled host); or give the name it was enrolled with (VAULT_FLEET_HOST or [fleet] host)"
    )]
    UnknownHost(String),
    #[error("host {0:?} is enrolled in this fleet already; nothing was changed")]
    HostExists(String),
    #[error("host {0:?} is not waiting to join. Run on it: vault fleet join")]
    NoJoinRequest(String),
    #[error(
        "the join code does not match host {0:?}'s request (mistyped, from another join, or the request was changed in the database); nothing was sent. Type the code vault fleet join shows on that host now"
    )]
    JoinCodeMismatch(String),
    #[error(
        "host {0:?} was not admitted in time; nothing was stored. Run vault fleet join again, and vault fleet admit {0} on an enrolled host meanwhile"
    )]
    JoinTimedOut(String),
    #[error(
        "the admission for host {0:?} does not open with this join's code and one-time key: it was not made with the code shown here (someone with write access to the database may have answered instead); nothing was stored. Run vault fleet join again and admit it with the new code"
    )]
    AdmissionUnreadable(String),
    #[error("host {0:?} is this host; remove it from another enrolled host")]
    RemovingSelf(String),
    #[error(
        "the fleet's data key changed while this ran (another host rekeyed it); nothing was written. Run the command again"
    )]
    KeyChanged,
    #[error(
        "host(s) {0} have no host key this fleet vouches for (they have not opened the fleet since this version, or a key was changed in the database); nothing was changed. Run any vault command on each (e.g. vault list), or remove them (vault fleet remove HOST), then rekey"
    )]
    HostKeysUnvouched(String),
    #[error(
        "host {0:?} holds no copy of the fleet's current data key: it was removed, or the fleet was rekeyed twice while it was away, or the key delivered to it does not check out. Enroll it again: vault fleet join (on it), vault fleet admit {0} (on an enrolled host)"
    )]
    NotDelivered(String),
    #[error(
        "another rotation of account {0:?}'s key is under way (on this host or another); nothing was changed. Try again once it ends"
    )]
    RotationUnderWay(String),
    #[error(
        "the fleet was rekeyed on this host ({0:?}) with a new master key, which this process does not have; restart it (vault serve) with the new key"
    )]
    RekeyedHere(String),
    #[error(
        "the database's answer to the rekey's commit was lost: whether the fleet was rekeyed is not known yet. Keep the new master key ({0}); once the database answers, vault doctor says whether this host uses it or names it for deletion"
    )]
    RekeyUnconfirmed(String),
    #[error(
        "the vault is busy with a write that is waiting (for the fleet database, or for another vault process); nothing was sent. Try again shortly"
    )]
    Busy,
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

    /// Creates a new vault in `dir`, its master key at `key_source` (a passphrase for it read from
    /// `passphrase`, else typed).
    pub fn init(
        dir: &Path,
        key_source: KeySource,
        passphrase: PassphraseFile<'_>,
    ) -> Result<Store, StoreError> {
        let path = Self::db_path(dir);
        if path.exists() {
            return Err(StoreError::VaultExists(dir.to_owned()));
        }
        create_private_dir(dir)?;
        let dir = &trusted_dir(dir)?;
        let path = Self::db_path(dir);
        let vault_id = hex(crypto::random_bytes::<16>()?.expose());
        let master = key_source.load_or_create(&vault_id, 1, passphrase)?;
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

    /// Opens the vault in `dir`. The master key comes from `unlock.source` when given, else from
    /// the source recorded at `vault init`.
    pub fn open(dir: &Path, unlock: &Unlock) -> Result<Store, StoreError> {
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
        let key_source = match &unlock.source {
            Some(source) => source.clone(),
            None => KeySource::from_record(&recorded)?,
        };
        let master = key_source.load(&vault_id, key_version, unlock.passphrase_file.as_deref())?;
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
}

impl Store {
    /// The vault's random id (names its keyring entry and binds the wrapped data key).
    pub fn vault_id(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'vault_id'", [], |row| {
                row.get(0)
            })?)
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

    /// Changes whenever another connection (another `vault` process) commits to the vault.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "data_version", |row| row.get(0))?)
    }
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

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    crate::files::create_private_dir(dir).map_err(|source| StoreError::Dir {
        path: dir.to_owned(),
        source,
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
