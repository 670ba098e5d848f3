//! Where the master key comes from: the OS keyring (default), a key file, `VAULT_MASTER_KEY`, or
//! a passphrase (Argon2id).
//!
//! The master key only wraps the vault's data key (see `store`), so changing where the master key
//! lives never re-encrypts the secrets themselves.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;

use crate::crypto::{self, KEY_LEN};
use crate::secret::{Secret, SecretString};

pub const MASTER_KEY_ENV: &str = "VAULT_MASTER_KEY";
const KEYRING_SERVICE: &str = "tokenvault";

pub type MasterKey = Secret<[u8; KEY_LEN]>;

/// Where a vault's master key lives; recorded in the vault (it is not secret) so later commands
/// find the key without flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The OS keyring (Secret Service, Keychain, Credential Manager), one entry per vault.
    Keyring,
    /// A 0600 file holding the base64 of 32 random bytes.
    File(PathBuf),
    /// The `VAULT_MASTER_KEY` environment variable.
    Env,
    /// Derived from a passphrase, typed or read from a file, with these recorded parameters.
    Passphrase(Kdf),
}

/// How a command obtains the master key: the source named on its command line (else the one the
/// vault records), and the file a passphrase is read from (else the terminal).
#[derive(Debug, Clone, Default)]
pub struct Unlock {
    pub source: Option<KeySource>,
    pub passphrase_file: Option<PathBuf>,
}

/// The file a passphrase is read from, when the vault's master key is derived from one; `None`
/// means typed on the terminal.
pub type PassphraseFile<'a> = Option<&'a Path>;

/// How to give the passphrase without a terminal, for the error that says so.
const PASSPHRASE_HOW: &str = "--key-passphrase-file PATH (or VAULT_KEY_PASSPHRASE_FILE, or the systemd credential tokenvault-passphrase)";

/// The name of the systemd credential (`LoadCredential=`) holding the passphrase.
pub const PASSPHRASE_CREDENTIAL: &str = "tokenvault-passphrase";

const SALT_LEN: usize = 16;

/// Argon2id's cost and salt for a passphrase-derived master key, recorded in the vault (they are
/// not secret, and the key cannot be derived again without them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kdf {
    memory_kib: u32,
    passes: u32,
    lanes: u32,
    salt: [u8; SALT_LEN],
}

impl Kdf {
    /// RFC 9106's second recommended setting (64 MiB, 3 passes, 4 lanes), for memory-constrained
    /// machines too; a fresh salt for each key.
    pub fn fresh() -> Result<Kdf, KeyError> {
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(crypto::random_bytes::<SALT_LEN>()?.expose());
        Ok(Kdf {
            memory_kib: 64 * 1024,
            passes: 3,
            lanes: 4,
            salt,
        })
    }

    /// The largest costs accepted from a record: an edited vault must not make every command
    /// allocate gigabytes or spin for minutes (it could only make its own key underivable).
    const MAX_MEMORY_KIB: u32 = 1024 * 1024;
    const MAX_PASSES: u32 = 16;
    const MAX_LANES: u32 = 16;

    fn params(&self) -> Result<argon2::Params, KeyError> {
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.passes > Self::MAX_PASSES
            || self.lanes > Self::MAX_LANES
        {
            return Err(KeyError::KdfRecord(self.to_record()));
        }
        argon2::Params::new(self.memory_kib, self.passes, self.lanes, Some(KEY_LEN))
            .map_err(|_| KeyError::KdfRecord(self.to_record()))
    }

    fn derive(&self, passphrase: &SecretString) -> Result<MasterKey, KeyError> {
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            self.params()?,
        );
        let mut key = Secret::new([0u8; KEY_LEN]);
        argon
            .hash_password_into(passphrase.expose().as_bytes(), &self.salt, key.expose_mut())
            .map_err(|_| KeyError::KdfRecord(self.to_record()))?;
        Ok(key)
    }

    fn to_record(&self) -> String {
        format!(
            "argon2id:m={},t={},p={}:{}",
            self.memory_kib,
            self.passes,
            self.lanes,
            STANDARD.encode(self.salt)
        )
    }

    fn from_record(record: &str) -> Option<Kdf> {
        let (params, salt) = record.strip_prefix("argon2id:")?.split_once(':')?;
        let mut numbers = params.split(',');
        let mut number = |name: &str| -> Option<u32> {
            numbers
                .next()?
                .strip_prefix(name)?
                .strip_prefix('=')?
                .parse()
                .ok()
        };
        let (memory_kib, passes, lanes) = (number("m")?, number("t")?, number("p")?);
        if numbers.next().is_some() {
            return None;
        }
        Some(Kdf {
            memory_kib,
            passes,
            lanes,
            salt: STANDARD.decode(salt).ok()?.try_into().ok()?,
        })
    }
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error(
        "no OS keyring is available ({0}). Use a key file instead: `vault --key-file ~/.config/tokenvault/master.key init` (created 0600), or set VAULT_MASTER_KEY to the output of `head -c 32 /dev/urandom | base64`"
    )]
    NoKeyring(String),
    #[error(
        "the OS keyring has no master key for this vault (service \"tokenvault\", user \"{0}\"). Give the key this vault was created with: --key-file PATH or VAULT_MASTER_KEY"
    )]
    KeyringEntryMissing(String),
    #[error(
        "key file {0} does not exist. Give the key file this vault was created with (--key-file or VAULT_KEY_FILE), or set VAULT_MASTER_KEY"
    )]
    KeyFileMissing(PathBuf),
    #[error(
        "key file {path} can be read by group or others (mode {mode:o}); refusing to use it. Run: chmod 600 {path}"
    )]
    KeyFileInsecure { path: PathBuf, mode: u32 },
    #[error("key file {0} belongs to another user; refusing to use it. Use a key file of your own")]
    KeyFileNotOwned(PathBuf),
    #[error("key file {0} is not a tokenvault master key (expected the base64 of 32 bytes)")]
    KeyFileMalformed(PathBuf),
    #[error(
        "VAULT_MASTER_KEY is not the base64 of 32 bytes. Generate one with: head -c 32 /dev/urandom | base64"
    )]
    EnvMalformed,
    #[error(
        "VAULT_MASTER_KEY is not set, but this vault's master key was given through it. Set it"
    )]
    EnvMissing,
    #[error("cannot use key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Random(#[from] crypto::CryptoError),
    #[error(transparent)]
    Passphrase(#[from] crate::passphrase::PassphraseError),
    #[error(
        "the vault records a master key source tokenvault does not know ({0}); was the database edited? Restore it from a backup"
    )]
    UnknownSource(String),
    #[error(
        "the vault's passphrase parameters are malformed or beyond the accepted costs ({0}); was the database edited? Restore it from a backup"
    )]
    KdfRecord(String),
}

impl KeySource {
    /// The form recorded in the vault's metadata.
    pub fn to_record(&self) -> String {
        match self {
            KeySource::Keyring => "keyring".to_owned(),
            KeySource::File(path) => format!("file:{}", path.display()),
            KeySource::Env => "env".to_owned(),
            KeySource::Passphrase(kdf) => format!("passphrase:{}", kdf.to_record()),
        }
    }

    pub fn from_record(record: &str) -> Result<KeySource, KeyError> {
        if let Some(path) = record.strip_prefix("file:") {
            return Ok(KeySource::File(PathBuf::from(path)));
        }
        if let Some(kdf) = record.strip_prefix("passphrase:") {
            return Kdf::from_record(kdf)
                .map(KeySource::Passphrase)
                .ok_or_else(|| KeyError::KdfRecord(excerpt(kdf)));
        }
        match record {
            "keyring" => Ok(KeySource::Keyring),
            "env" => Ok(KeySource::Env),
            other => Err(KeyError::UnknownSource(excerpt(other))),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            KeySource::Keyring => "the OS keyring".to_owned(),
            KeySource::File(path) => format!("key file {}", path.display()),
            KeySource::Env => "VAULT_MASTER_KEY".to_owned(),
            KeySource::Passphrase(_) => "a passphrase (Argon2id)".to_owned(),
        }
    }

    /// Loads the master key of the vault `vault_id` that wraps data-key `version` from this source;
    /// a passphrase comes from `passphrase` or the terminal.
    pub fn load(
        &self,
        vault_id: &str,
        version: i64,
        passphrase: PassphraseFile<'_>,
    ) -> Result<MasterKey, KeyError> {
        match self {
            KeySource::Keyring => load_from_keyring(vault_id, version),
            KeySource::File(path) => load_key_file(path),
            KeySource::Env => load_from_env(),
            KeySource::Passphrase(kdf) => kdf.derive(&read_passphrase(passphrase, false)?),
        }
    }

    /// Loads the key from this source, creating it first where the source is empty (a new key file
    /// or keyring entry, a passphrase chosen now). Used by `vault init` and `vault rekey`.
    pub fn load_or_create(
        &self,
        vault_id: &str,
        version: i64,
        passphrase: PassphraseFile<'_>,
    ) -> Result<MasterKey, KeyError> {
        match self {
            KeySource::Keyring => create_in_keyring(vault_id, version),
            KeySource::File(path) if path.exists() => load_key_file(path),
            KeySource::File(path) => create_key_file(path),
            KeySource::Env => load_from_env(),
            KeySource::Passphrase(kdf) => kdf.derive(&read_passphrase(passphrase, true)?),
        }
    }
}

/// A record read from the database, for an error message: an edited one may be long or hold
/// control characters that must not reach the terminal.
fn excerpt(record: &str) -> String {
    format!("{:?}", record.chars().take(60).collect::<String>())
}

fn read_passphrase(file: PassphraseFile<'_>, new: bool) -> Result<SecretString, KeyError> {
    Ok(crate::passphrase::read(&crate::passphrase::Ask {
        file,
        what: if new {
            "new passphrase for the vault's master key"
        } else {
            "passphrase of the vault's master key"
        },
        how: PASSPHRASE_HOW,
        new,
    })?)
}

/// `VAULT_MASTER_KEY` as this process found it, read once. `main` reads it and then removes it
/// from the environment before any thread starts, so no child (`vault exec`, the alert command,
/// the browser, notify-send) inherits the key that opens every secret.
static ENV_KEY: std::sync::OnceLock<Option<SecretString>> = std::sync::OnceLock::new();

/// Reads `VAULT_MASTER_KEY` into this process (once); `main` then removes it from the environment.
pub fn capture_env_key() {
    env_key();
}

fn env_key() -> Option<&'static SecretString> {
    ENV_KEY
        .get_or_init(|| {
            std::env::var_os(MASTER_KEY_ENV)
                // A value that is not UTF-8 stays present, and fails to decode with a clear error.
                .map(|value| SecretString::from(value.into_string().unwrap_or_default()))
        })
        .as_ref()
}

/// Whether `VAULT_MASTER_KEY` was set; it wins over every other source.
pub fn env_key_present() -> bool {
    env_key().is_some()
}

fn decode_key(text: &str) -> Option<MasterKey> {
    let bytes = Secret::new(STANDARD.decode(text.trim()).ok()?);
    let array: [u8; KEY_LEN] = bytes.expose().as_slice().try_into().ok()?;
    Some(Secret::new(array))
}

fn encode_key(key: &MasterKey) -> SecretString {
    SecretString::from(STANDARD.encode(key.expose()))
}

fn load_from_env() -> Result<MasterKey, KeyError> {
    let value = env_key().ok_or(KeyError::EnvMissing)?;
    decode_key(value.expose()).ok_or(KeyError::EnvMalformed)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

fn load_key_file(path: &Path) -> Result<MasterKey, KeyError> {
    let meta = match fs::metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyError::KeyFileMissing(path.to_owned()));
        }
        other => other.map_err(io_error(path))?,
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::KeyFileInsecure {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(KeyError::KeyFileNotOwned(path.to_owned()));
    }
    let text = SecretString::from(fs::read_to_string(path).map_err(io_error(path))?);
    decode_key(text.expose()).ok_or_else(|| KeyError::KeyFileMalformed(path.to_owned()))
}

fn create_key_file(path: &Path) -> Result<MasterKey, KeyError> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        crate::files::create_private_dir(dir).map_err(io_error(path))?;
    }
    let key = crypto::random_bytes::<KEY_LEN>()?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    let encoded = encode_key(&key);
    file.write_all(encoded.expose().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .and_then(|()| sync_parent_dir(path))
        .map_err(io_error(path))?;
    Ok(key)
}

/// Makes the new file's name durable too: a vault (or a rekey) commits to this key right after,
/// and after a power loss a committed vault whose key file vanished could not be opened again.
fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// The keyring entry's user name for the master key that wraps data-key `version`: the vault id
/// for the first, `ID.vN` after a rekey. A rekey thus writes the new key beside the old one, and a
/// crash before its commit leaves the old entry, still the one in use, untouched.
pub fn keyring_user(vault_id: &str, version: i64) -> String {
    if version <= 1 {
        vault_id.to_owned()
    } else {
        format!("{vault_id}.v{version}")
    }
}

fn keyring_entry(user: &str) -> Result<keyring::Entry, KeyError> {
    keyring::Entry::new(KEYRING_SERVICE, user).map_err(keyring_unavailable)
}

/// Keyring errors are reduced to their kind: some variants carry the stored bytes, which must not
/// reach a message.
fn keyring_unavailable(err: keyring::Error) -> KeyError {
    use keyring::Error as K;
    let reason = match err {
        K::PlatformFailure(inner) | K::NoStorageAccess(inner) => inner.to_string(),
        K::NoDefaultStore => "no Secret Service / keychain on this system".to_owned(),
        _ => "the keyring refused the request".to_owned(),
    };
    KeyError::NoKeyring(reason)
}

fn load_from_keyring(vault_id: &str, version: i64) -> Result<MasterKey, KeyError> {
    let user = keyring_user(vault_id, version);
    match keyring_entry(&user)?.get_password() {
        Ok(text) => {
            let text = SecretString::from(text);
            decode_key(text.expose()).ok_or(KeyError::KeyringEntryMissing(user))
        }
        Err(keyring::Error::NoEntry) => Err(KeyError::KeyringEntryMissing(user)),
        Err(err) => Err(keyring_unavailable(err)),
    }
}

fn create_in_keyring(vault_id: &str, version: i64) -> Result<MasterKey, KeyError> {
    let key = crypto::random_bytes::<KEY_LEN>()?;
    keyring_entry(&keyring_user(vault_id, version))?
        .set_password(encode_key(&key).expose())
        .map_err(keyring_unavailable)?;
    Ok(key)
}

/// Whether the keyring holds the master key for data-key `version` (`vault doctor` looks for old
/// ones a rekey left behind).
pub fn keyring_entry_exists(vault_id: &str, version: i64) -> bool {
    keyring_entry(&keyring_user(vault_id, version)).is_ok_and(|entry| entry.get_password().is_ok())
}

/// Removes the keyring entry of the master key for data-key `version`: after a rekey (the old
/// key must not open old backups of the vault), or when creating a vault failed.
pub fn forget_keyring_entry(vault_id: &str, version: i64) {
    if let Ok(entry) = keyring_entry(&keyring_user(vault_id, version)) {
        let _ = entry.delete_credential();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/master.key");
        let created = KeySource::File(path.clone())
            .load_or_create("v", 1, None)
            .unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = KeySource::File(path).load("v", 1, None).unwrap();
        assert_eq!(created.expose(), loaded.expose());
    }

    #[test]
    fn readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        KeySource::File(path.clone())
            .load_or_create("v", 1, None)
            .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeySource::File(path).load("v", 1, None).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        fs::write(&path, "not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            KeySource::File(path).load("v", 1, None),
            Err(KeyError::KeyFileMalformed(_))
        ));
    }

    #[test]
    fn source_record_round_trips() {
        for source in [
            KeySource::Keyring,
            KeySource::Env,
            KeySource::File("/k/m.key".into()),
            KeySource::Passphrase(Kdf::fresh().unwrap()),
        ] {
            assert_eq!(KeySource::from_record(&source.to_record()).unwrap(), source);
        }
        for edited in [
            "",
            "keyrin",
            "passphrase:argon2id:m=1,t=1:AAAA",
            "passphrase:x",
        ] {
            assert!(KeySource::from_record(edited).is_err(), "{edited}");
        }
    }

    fn private_file(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("passphrase");
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn a_passphrase_derives_the_same_key_with_the_same_salt_only() {
        let dir = tempfile::tempdir().unwrap();
        let right = private_file(dir.path(), "correct horse battery staple\n");
        let kdf = Kdf {
            // Cheap costs: the derivation, not Argon2's strength, is under test.
            memory_kib: 64,
            passes: 1,
            lanes: 1,
            ..Kdf::fresh().unwrap()
        };
        let source = KeySource::Passphrase(kdf.clone());
        let created = source.load_or_create("v", 1, Some(&right)).unwrap();
        let loaded = source.load("v", 1, Some(&right)).unwrap();
        assert_eq!(created.expose(), loaded.expose());
        let other_salt = KeySource::Passphrase(Kdf {
            salt: [7; SALT_LEN],
            ..kdf
        });
        assert_ne!(
            other_salt.load("v", 1, Some(&right)).unwrap().expose(),
            created.expose()
        );
        let wrong = private_file(dir.path(), "correct horse battery stapler");
        assert_ne!(
            source.load("v", 1, Some(&wrong)).unwrap().expose(),
            created.expose()
        );
    }

    #[test]
    fn edited_costs_beyond_the_limits_are_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let file = private_file(dir.path(), "correct horse battery staple");
        let mut kdf = Kdf::fresh().unwrap();
        kdf.memory_kib = u32::MAX;
        let err = KeySource::Passphrase(kdf)
            .load("v", 1, Some(&file))
            .unwrap_err();
        assert!(matches!(err, KeyError::KdfRecord(_)), "{err}");
    }
}
