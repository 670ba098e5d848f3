//! `vault rekey`: a new data key and a new master key, every secret re-sealed in one transaction.

use std::path::{Path, PathBuf};

use super::Context;
use crate::error::Error;
use crate::keys::{self, Kdf, KeySource};

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
    let mut store = context.open()?;
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
    match old {
        KeySource::File(path) => println!(
            "The old key file {} no longer opens the vault; delete it.",
            path.display()
        ),
        KeySource::Keyring => keys::forget_keyring_entry(&store.vault_id()?, old_version),
        KeySource::Env => println!(
            "Unset VAULT_MASTER_KEY: the vault now uses {}.",
            new.describe()
        ),
        KeySource::Passphrase(_) => println!("The old passphrase no longer opens the vault."),
    }
    Ok(())
}
