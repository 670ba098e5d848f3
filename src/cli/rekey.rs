//! `vault rekey`: a new data key and a new master key, every secret re-sealed in one transaction.

use std::path::PathBuf;

use super::Context;
use crate::error::Error;
use crate::keys::{self, KeySource};

pub(super) fn rekey(context: &Context, new_key_file: Option<PathBuf>) -> Result<(), Error> {
    let mut store = context.open()?;
    let old = store.key_source().clone();
    let new = match new_key_file {
        // A new file, never the old one rewritten: until the commit the old key must keep working.
        Some(path) if path.exists() => {
            return Err(Error::Input(format!(
                "{} exists; give a path for a new key file",
                path.display()
            )));
        }
        Some(path) => KeySource::File(std::path::absolute(&path).unwrap_or(path)),
        None => KeySource::Keyring,
    };
    let old_version = store.key_version();
    store.rekey(new.clone())?;
    if !store.checkpoint() {
        eprintln!(
            "vault: warning: a reader kept vault.db from being checkpointed; until SQLite checkpoints it (automatically, or when the last process using the vault, the daemon included, closes it), a copy of vault.db without its -wal file still opens with the old key. Take backups after that"
        );
    }
    println!(
        "Rekeyed: every secret is re-sealed with a new data key, wrapped by the master key in {}.",
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
    }
    Ok(())
}
