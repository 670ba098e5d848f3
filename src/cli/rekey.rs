//! `vault rekey`: a new data key and a new master key, every secret re-sealed in one transaction.

use std::path::{Path, PathBuf};

use super::Context;
use crate::error::Error;
use crate::keys::{self, Kdf, KeySource};
use crate::store::{AnyStore, PgStore};

/// Where the new master key goes, as the command line chose.
pub(super) enum Target {
    KeyFile(PathBuf),
    Keyring,
    Passphrase,
}

impl Target {
    pub(super) fn chosen(new_key_file: Option<PathBuf>, passphrase: bool) -> Target {
        match (new_key_file, passphrase) {
            (Some(path), _) => Target::KeyFile(std::path::absolute(&path).unwrap_or(path)),
            (None, true) => Target::Passphrase,
            (None, false) => Target::Keyring,
        }
    }

    fn source(self) -> Result<KeySource, Error> {
        Ok(match self {
            // A new file, never the old one rewritten: until the commit the old key must keep working.
            Target::KeyFile(path) if path.exists() => {
                return Err(Error::Input(format!(
                    "{} exists; give a path for a new key file",
                    path.display()
                )));
            }
            Target::KeyFile(path) => KeySource::File(path),
            Target::Keyring => KeySource::Keyring,
            // A fresh salt: the new key differs from the old even for the same passphrase.
            Target::Passphrase => KeySource::Passphrase(Kdf::fresh()?),
        })
    }
}

pub(super) fn rekey(
    context: &Context,
    target: Target,
    new_passphrase_file: Option<&Path>,
) -> Result<(), Error> {
    let mut store = match context.open_any()? {
        AnyStore::Local(store) => store,
        AnyStore::Fleet(store) => return rekey_fleet(context, store, target, new_passphrase_file),
    };
    let old = store.key_source().clone();
    let new = target.source()?;
    let old_version = store.key_version();
    store.rekey(new.clone(), new_passphrase_file)?;
    if !store.checkpoint() {
        eprintln!(
            "vault: warning: a reader kept vault.db from being checkpointed; until SQLite checkpoints it (automatically, or when the last process using the vault, the daemon included, closes it), a copy of vault.db without its -wal file still opens with the old key. Take backups after that"
        );
    }
    println!(
        "Rekeyed: every secret is re-sealed with a new data key, wrapped by the master key from {}.",
        new.describe()
    );
    retire_old_master_key(old, &new, &store.vault_id()?, old_version);
    Ok(())
}

/// `vault rekey` on a fleet: a new data key for the whole fleet (this host's master key from
/// `target`), delivered to every other enrolled host's own key.
fn rekey_fleet(
    context: &Context,
    mut store: PgStore,
    target: Target,
    new_passphrase_file: Option<&Path>,
) -> Result<(), Error> {
    let (recorded, old_version) = store.host_master()?;
    let old = context.unlock().source.unwrap_or(recorded);
    let new = target.source()?;
    let hosts = store.rekey_fleet(&new, new_passphrase_file)?;
    println!(
        "Rekeyed the fleet: every secret is re-sealed with a new data key; this host's copy is wrapped by the master key from {}.",
        new.describe()
    );
    if hosts.is_empty() {
        println!("No other host is enrolled.");
    } else {
        println!(
            "Delivered to {} (each sealed to that host's own key): each takes it the next time it opens the fleet, a running daemon within seconds. A host removed before the rekey got none.",
            hosts.join(", ")
        );
    }
    retire_old_master_key(old, &new, store.vault_id(), old_version);
    Ok(())
}

/// Tells what to do with the master key a rekey replaced (and removes a keyring entry).
fn retire_old_master_key(old: KeySource, new: &KeySource, vault_id: &str, old_version: i64) {
    match old {
        KeySource::File(path) => println!(
            "The old key file {} no longer opens the vault; delete it.",
            path.display()
        ),
        KeySource::Keyring => keys::forget_keyring_entry(vault_id, old_version),
        KeySource::Env => println!(
            "Unset VAULT_MASTER_KEY: the vault now uses {}.",
            new.describe()
        ),
        KeySource::Passphrase(_) => println!("The old passphrase no longer opens the vault."),
    }
}
