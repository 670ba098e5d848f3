//! `vault export` / `vault import`: every account, its settings and its secrets, in one file sealed
//! with a key derived from a passphrase (PBKDF2-HMAC-SHA256, ring), never in plaintext.

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::account::{AccountConfig, SecretKind};
use crate::crypto::{self, KEY_LEN, Key};
use crate::error::Error;
use crate::secret::{Secret, SecretString};
use crate::store::{AnyStore, NewAccount, RefreshStore, StoreError, TokenUpdate};

const FORMAT: &str = "tokenvault-export";
const ITERATIONS: u32 = 600_000;
const AAD: &[u8] = b"tokenvault export v1";

/// The file: public parameters and the sealed payload.
#[derive(Serialize, Deserialize)]
struct Archive {
    format: String,
    version: u32,
    kdf: String,
    iterations: u32,
    salt: String,
    sealed: String,
}

/// What is sealed: the accounts with their secrets in plaintext (inside the seal only).
#[derive(Serialize, Deserialize)]
struct Payload {
    accounts: Vec<ExportedAccount>,
}

#[derive(Serialize, Deserialize)]
struct ExportedAccount {
    name: String,
    config: AccountConfig,
    access_expires_at: Option<i64>,
    refresh_expires_at: Option<i64>,
    validation_schedule: Option<String>,
    refresh_before: Option<u64>,
    /// Absent from archives made before client-secret rotation.
    #[serde(default)]
    client_secret_expires_at: Option<i64>,
    /// Absent from archives made before key rotation.
    #[serde(default)]
    key_created_at: Option<i64>,
    #[serde(default)]
    rotate_every: Option<i64>,
    /// Secret kind → value.
    secrets: Vec<(String, String)>,
}

impl ExportedAccount {
    fn secret(&self, kind: SecretKind) -> Option<SecretString> {
        self.secrets
            .iter()
            .find(|(k, _)| k == kind.as_str())
            .map(|(_, v)| SecretString::from(v.clone()))
    }
}

/// The long-lived secrets an imported account brings (its access token goes with its tokens).
fn long_lived_secrets(account: &ExportedAccount) -> Vec<(SecretKind, SecretString)> {
    SecretKind::ALL
        .iter()
        .copied()
        .filter(|&kind| kind != SecretKind::AccessToken)
        .filter_map(|kind| account.secret(kind).map(|value| (kind, value)))
        .collect()
}

/// What an archive brings is checked as if typed on the command line: names, endpoint URLs
/// (https, or http on loopback) and schedules. Nothing is stored when any of it is wrong.
fn check_payload(payload: &Payload) -> Result<(), Error> {
    for account in &payload.accounts {
        crate::account::validate_name(&account.name).map_err(Error::Input)?;
        account.config.endpoints.check().map_err(|err| {
            Error::Input(format!(
                "account {:?} in the archive: {err}; nothing was imported",
                account.name
            ))
        })?;
        if let Some(schedule) = &account.validation_schedule {
            crate::config::parse_schedule(schedule).map_err(|err| {
                Error::Input(format!(
                    "account {:?} in the archive: {err}; nothing was imported",
                    account.name
                ))
            })?;
        }
    }
    Ok(())
}

impl Drop for ExportedAccount {
    fn drop(&mut self) {
        for (_, value) in &mut self.secrets {
            zeroize::Zeroize::zeroize(value);
        }
    }
}

/// An archive's iteration count is read from the file; past these bounds it is damaged or
/// hostile (2^32-1 rounds would hold `vault import` for about 20 minutes).
const ITERATIONS_ACCEPTED: std::ops::RangeInclusive<u32> = 100_000..=10_000_000;

fn derive(passphrase: &SecretString, salt: &[u8], iterations: u32) -> Result<Key, Error> {
    let iterations = NonZeroU32::new(iterations)
        .filter(|count| ITERATIONS_ACCEPTED.contains(&count.get()))
        .ok_or_else(|| {
            Error::Input(format!(
                "the archive asks for {iterations} key-derivation rounds; tokenvault accepts {} to {}, so it is damaged or not from tokenvault; nothing was imported",
                ITERATIONS_ACCEPTED.start(),
                ITERATIONS_ACCEPTED.end()
            ))
        })?;
    let mut bytes = Secret::new([0u8; KEY_LEN]);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        passphrase.expose().as_bytes(),
        bytes.expose_mut(),
    );
    Ok(Key::from_bytes(&bytes))
}

/// Every account of `store` with its secrets, in memory.
fn collect(store: &AnyStore) -> Result<Payload, Error> {
    let mut accounts = Vec::new();
    for account in store.accounts()? {
        let mut secrets = Vec::new();
        for &kind in SecretKind::ALL {
            if let Some(value) = store.secret(&account, kind)? {
                secrets.push((kind.as_str().to_owned(), value.expose().clone()));
            }
        }
        accounts.push(ExportedAccount {
            name: account.name,
            config: account.config,
            access_expires_at: account.access_expires_at,
            refresh_expires_at: account.refresh_expires_at,
            validation_schedule: account.validation_schedule,
            refresh_before: account.refresh_before,
            client_secret_expires_at: account.client_secret_expires_at,
            key_created_at: account.key_created_at,
            rotate_every: account.rotate_every,
            secrets,
        });
    }
    Ok(Payload { accounts })
}

/// Copies every account of `from` into `to` (a vault moving into a fleet): all, or none.
pub fn copy_accounts(from: &AnyStore, to: &mut AnyStore) -> Result<Vec<String>, Error> {
    store_payload(to, &collect(from)?)
}

/// The archive's bytes for every account of `store`.
pub fn export(store: &AnyStore, passphrase: &SecretString) -> Result<(Vec<u8>, usize), Error> {
    let payload = collect(store)?;
    let count = payload.accounts.len();
    let plain =
        Secret::new(serde_json::to_vec(&payload).map_err(|err| Error::Internal(err.to_string()))?);
    drop(payload);
    let salt = crypto::random_bytes::<16>().map_err(StoreError::from)?;
    let sealed = derive(passphrase, salt.expose(), ITERATIONS)?
        .seal(plain.expose(), AAD)
        .map_err(StoreError::from)?;
    let archive = Archive {
        format: FORMAT.into(),
        version: 1,
        kdf: "pbkdf2-hmac-sha256".into(),
        iterations: ITERATIONS,
        salt: STANDARD.encode(salt.expose()),
        sealed: STANDARD.encode(sealed),
    };
    let bytes =
        serde_json::to_vec_pretty(&archive).map_err(|err| Error::Internal(err.to_string()))?;
    Ok((bytes, count))
}

/// Adds the archive's accounts to `store`: all of them, or none when a name is taken.
pub fn import(
    store: &mut AnyStore,
    bytes: &[u8],
    passphrase: &SecretString,
) -> Result<Vec<String>, Error> {
    let damaged = || {
        Error::Input(
            "this is not a tokenvault export, or it is damaged (truncated or altered)".into(),
        )
    };
    let archive: Archive = serde_json::from_slice(bytes).map_err(|_| damaged())?;
    if archive.format != FORMAT || archive.version != 1 || archive.kdf != "pbkdf2-hmac-sha256" {
        return Err(damaged());
    }
    let salt = STANDARD.decode(&archive.salt).map_err(|_| damaged())?;
    let sealed = STANDARD.decode(&archive.sealed).map_err(|_| damaged())?;
    let plain = derive(passphrase, &salt, archive.iterations)?
        .open(&sealed, AAD)
        .map_err(|_| {
            Error::Input(
                "wrong passphrase, or the archive was altered; nothing was imported".into(),
            )
        })?;
    let payload: Payload = serde_json::from_slice(plain.expose()).map_err(|_| damaged())?;
    store_payload(store, &payload)
}

/// Adds `payload`'s accounts to `store`: all of them, or none when a name is taken.
fn store_payload(store: &mut AnyStore, payload: &Payload) -> Result<Vec<String>, Error> {
    check_payload(payload)?;
    let taken: Vec<&str> = payload
        .accounts
        .iter()
        .filter(|account| store.account(&account.name).is_ok())
        .map(|account| account.name.as_str())
        .collect();
    if !taken.is_empty() {
        return Err(Error::Input(format!(
            "the vault already has account(s) {}; nothing was imported. Remove them first, or import into another vault",
            taken.join(", ")
        )));
    }
    let empty = SecretString::from(String::new());
    let secrets: Vec<Vec<(SecretKind, SecretString)>> =
        payload.accounts.iter().map(long_lived_secrets).collect();
    let secret_refs: Vec<Vec<(SecretKind, &SecretString)>> = secrets
        .iter()
        .map(|list| list.iter().map(|(kind, value)| (*kind, value)).collect())
        .collect();
    let access: Vec<Option<SecretString>> = payload
        .accounts
        .iter()
        .map(|account| account.secret(SecretKind::AccessToken))
        .collect();
    let updates: Vec<TokenUpdate<'_>> = payload
        .accounts
        .iter()
        .zip(&access)
        .map(|(account, access)| TokenUpdate {
            access_token: access.as_ref().unwrap_or(&empty),
            access_expires_at: account.access_expires_at.filter(|_| access.is_some()),
            new_refresh_token: None,
            refresh_expires_at: account.refresh_expires_at,
            validated: false,
        })
        .collect();
    let new: Vec<NewAccount<'_>> = payload
        .accounts
        .iter()
        .zip(&secret_refs)
        .zip(&updates)
        .map(|((account, secrets), tokens)| NewAccount {
            name: &account.name,
            config: &account.config,
            secrets,
            tokens,
            validation_schedule: account.validation_schedule.as_deref(),
            refresh_before: account.refresh_before,
            client_secret_expires_at: account.client_secret_expires_at,
            key_created_at: account.key_created_at,
            rotate_every: account.rotate_every,
        })
        .collect();
    store.insert_accounts(&new).map_err(|err| match err {
        StoreError::AccountExists(name) => Error::Input(format!(
            "the archive holds account {name:?} twice, or the vault gained it meanwhile; nothing was imported"
        )),
        other => other.into(),
    })?;
    let names = payload
        .accounts
        .iter()
        .map(|account| account.name.clone())
        .collect();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySource;
    use crate::store::Store;

    fn scratch_store() -> (tempfile::TempDir, AnyStore) {
        let root = tempfile::tempdir().unwrap();
        let key = KeySource::File(root.path().join("master.key"));
        let store = Store::init(&root.path().join("vault"), key, None).unwrap();
        (root, AnyStore::Local(store))
    }

    fn passphrase() -> SecretString {
        SecretString::from("correct horse battery staple".to_owned())
    }

    /// An archive sealed like `export` does, around a payload made by hand.
    fn sealed(payload: &serde_json::Value, iterations: u32) -> Vec<u8> {
        let salt = [7u8; 16];
        let key = derive(&passphrase(), &salt, iterations).unwrap();
        let sealed = key.seal(payload.to_string().as_bytes(), AAD).unwrap();
        serde_json::to_vec(&Archive {
            format: FORMAT.into(),
            version: 1,
            kdf: "pbkdf2-hmac-sha256".into(),
            iterations,
            salt: STANDARD.encode(salt),
            sealed: STANDARD.encode(sealed),
        })
        .unwrap()
    }

    fn account(name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "config": {
                "grant": "refresh_token",
                "endpoints": {"provider": "custom", "token_url": "https://example.com/token",
                              "auth_url": null, "device_url": null, "issuer": null,
                              "offline": "as_configured"},
                "client_id": "id", "client_auth": "basic", "scopes": [], "login": "browser",
                "service_account_email": null, "key_id": null, "subject": null
            },
            "access_expires_at": null, "refresh_expires_at": null,
            "validation_schedule": null, "refresh_before": null,
            "secrets": [["refresh_token", "rt"]]
        })
    }

    #[test]
    fn an_archive_holding_a_name_twice_imports_nothing() {
        let (_root, mut store) = scratch_store();
        let payload = serde_json::json!({"accounts": [account("a"), account("b"), account("a")]});
        let err = import(&mut store, &sealed(&payload, 100_000), &passphrase()).unwrap_err();
        assert!(err.to_string().contains("nothing was imported"), "{err}");
        assert!(store.accounts().unwrap().is_empty(), "a partial import");
        let payload = serde_json::json!({"accounts": [account("a"), account("b")]});
        assert_eq!(
            import(&mut store, &sealed(&payload, 100_000), &passphrase()).unwrap(),
            ["a", "b"]
        );
    }

    #[test]
    fn an_absurd_iteration_count_is_refused_at_once() {
        let (_root, mut store) = scratch_store();
        let mut archive: serde_json::Value =
            serde_json::from_slice(&sealed(&serde_json::json!({"accounts": []}), 100_000)).unwrap();
        for iterations in [0, 1, 99_999, 10_000_001, u32::MAX] {
            archive["iterations"] = iterations.into();
            let started = std::time::Instant::now();
            let bytes = serde_json::to_vec(&archive).unwrap();
            let err = import(&mut store, &bytes, &passphrase()).unwrap_err();
            assert!(err.to_string().contains("key-derivation rounds"), "{err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]
        /// Any file given to `vault import` is refused with a message before anything is
        /// written.
        #[test]
        fn any_archive_bytes_are_refused_cleanly(
            body in crate::fuzzing::untrusted_json(&[
                "format", "version", "kdf", "iterations", "salt", "sealed",
            ]),
        ) {
            let (_root, mut store) = scratch_store();
            let result = import(&mut store, &body, &passphrase());
            proptest::prop_assert!(result.is_err());
            proptest::prop_assert!(store.accounts().unwrap().is_empty());
        }
    }
}
