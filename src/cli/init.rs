use super::Context;
use crate::error::Error;
use crate::keys::{KeyError, KeySource};
use crate::store::{Store, StoreError};

pub(super) fn run(context: &Context) -> Result<(), Error> {
    let store = match context.key_override() {
        Some(source) => Store::init(&context.dir, source)?,
        None => match Store::init(&context.dir, KeySource::Keyring) {
            Err(StoreError::Key(KeyError::NoKeyring(reason))) => {
                let key_file = fallback_key_file();
                eprintln!(
                    "No OS keyring is available ({reason}).\nFalling back to the key file {} (mode 0600). Keep it out of backups of the vault,\nor use VAULT_MASTER_KEY / --key-file PATH to put the key elsewhere.",
                    key_file.display()
                );
                Store::init(&context.dir, KeySource::File(key_file))?
            }
            other => other?,
        },
    };
    println!(
        "Created the vault {} (master key: {}).\nNext: vault add-account NAME --provider google --client-id ID --scope …",
        context.dir.display(),
        store.key_source().describe()
    );
    Ok(())
}

/// The key file used when there is no keyring: the config dir, apart from the data it protects.
fn fallback_key_file() -> std::path::PathBuf {
    directories::ProjectDirs::from("", "", "tokenvault")
        .map(|dirs| dirs.config_dir().join("master.key"))
        .unwrap_or_else(|| std::path::PathBuf::from("tokenvault-master.key"))
}
