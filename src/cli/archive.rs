//! `vault export` and `vault import`: every account, sealed with a passphrase, to move a vault
//! to another machine.

use super::Context;
use crate::error::Error;
use crate::secret::SecretString;

/// A passphrase from a file, else typed (twice when `confirm`); at least 12 characters.
fn passphrase(file: Option<&std::path::Path>, confirm: bool) -> Result<SecretString, Error> {
    use std::io::IsTerminal;
    let typed = match file {
        Some(path) => SecretString::from(std::fs::read_to_string(path).map_err(|err| {
            Error::Input(format!(
                "cannot read the passphrase file {}: {err}",
                path.display()
            ))
        })?)
        .trimmed(),
        None if std::io::stdin().is_terminal() => {
            let first = SecretString::from(
                rpassword::prompt_password("Passphrase: ")
                    .map_err(|err| Error::Input(format!("cannot read the passphrase: {err}")))?,
            );
            if confirm {
                let again =
                    SecretString::from(rpassword::prompt_password("Again: ").map_err(|err| {
                        Error::Input(format!("cannot read the passphrase: {err}"))
                    })?);
                if again.expose() != first.expose() {
                    return Err(Error::Input(
                        "the passphrases differ; nothing was written".into(),
                    ));
                }
            }
            first
        }
        None => {
            return Err(Error::Input(
                "give --passphrase-file PATH, or run on a terminal to type the passphrase".into(),
            ));
        }
    };
    if typed.expose().chars().count() < 12 {
        return Err(Error::Input(
            "the passphrase is shorter than 12 characters; choose a longer one".into(),
        ));
    }
    Ok(typed)
}

pub(super) fn export(
    context: &Context,
    file: &std::path::Path,
    passphrase_file: Option<&std::path::Path>,
) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let store = context.open()?;
    let passphrase = passphrase(passphrase_file, true)?;
    let (bytes, count) = crate::archive::export(&store, &passphrase)?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|err| {
            Error::Input(format!(
                "cannot create {} (it must not exist yet): {err}",
                file.display()
            ))
        })?;
    out.write_all(&bytes)
        .and_then(|()| out.sync_all())
        .map_err(|err| Error::Input(format!("cannot write {}: {err}", file.display())))?;
    println!(
        "Exported {count} account(s) to {}, sealed with your passphrase.",
        file.display()
    );
    Ok(())
}

pub(super) fn import(
    context: &Context,
    file: &std::path::Path,
    passphrase_file: Option<&std::path::Path>,
) -> Result<(), Error> {
    let bytes = std::fs::read(file)
        .map_err(|err| Error::Input(format!("cannot read {}: {err}", file.display())))?;
    let mut store = context.open()?;
    let passphrase = passphrase(passphrase_file, false)?;
    let names = crate::archive::import(&mut store, &bytes, &passphrase)?;
    println!("Imported {} account(s): {}", names.len(), names.join(", "));
    Ok(())
}
