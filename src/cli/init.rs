use super::Context;
use crate::error::Error;
use crate::keys::{Kdf, KeyError, KeySource, PassphraseFile};
use crate::store::{Store, StoreError};

pub(super) fn run(context: &Context, passphrase: bool) -> Result<(), Error> {
    let store = with_new_master_key(context, passphrase, |source, passphrase| {
        Store::init(&context.dir, source, passphrase)
    })?;
    println!(
        "Created the vault {} (master key: {}).\nNext: vault add-account NAME --provider google --client-id ID --scope …",
        context.dir.display(),
        store.key_source().describe()
    );
    Ok(())
}

/// Creates a vault with a new master key: the source the user named, a passphrase, else the OS
/// keyring, else (no keyring on this machine) a key file in the config directory.
pub(super) fn with_new_master_key<T>(
    context: &Context,
    passphrase: bool,
    mut create: impl FnMut(KeySource, PassphraseFile<'_>) -> Result<T, StoreError>,
) -> Result<T, Error> {
    let passphrase_file = context.passphrase_file.as_deref();
    Ok(match (context.key_override(), passphrase) {
        (Some(source), true) => {
            return Err(Error::Input(format!(
                "--passphrase derives the master key from a passphrase, but {} was given too; choose one",
                source.describe()
            )));
        }
        (Some(source), false) => create(source, None)?,
        (None, true) => create(KeySource::Passphrase(Kdf::fresh()?), passphrase_file)?,
        (None, false) => match create(KeySource::Keyring, None) {
            Err(StoreError::Key(KeyError::NoKeyring(reason))) => {
                let key_file = fallback_key_file();
                eprintln!(
                    "No OS keyring is available ({reason}).\nFalling back to the key file {} (mode 0600). Keep it out of backups of the vault,\nor use VAULT_MASTER_KEY / --key-file PATH / --passphrase to put the key elsewhere.",
                    key_file.display()
                );
                create(KeySource::File(key_file), None)?
            }
            other => other?,
        },
    })
}

/// The key file used when there is no keyring: the config dir, apart from the data it protects.
fn fallback_key_file() -> std::path::PathBuf {
    directories::ProjectDirs::from("", "", "tokenvault")
        .map(|dirs| dirs.config_dir().join("master.key"))
        .unwrap_or_else(|| std::path::PathBuf::from("tokenvault-master.key"))
}
