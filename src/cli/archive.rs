//! `vault export` and `vault import`: every account, sealed with a passphrase, to move a vault
//! to another machine.

use super::Context;
use crate::error::Error;
use crate::secret::SecretString;

/// The archive's passphrase from `--passphrase-file`, else typed (twice when it is chosen).
fn passphrase(file: Option<&std::path::Path>, new: bool) -> Result<SecretString, Error> {
    Ok(crate::passphrase::read(&crate::passphrase::Ask {
        file,
        what: "archive passphrase",
        how: "--passphrase-file PATH",
        new,
    })?)
}

pub(super) fn export(
    context: &Context,
    file: &std::path::Path,
    passphrase_file: Option<&std::path::Path>,
) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let store = context.open_any()?;
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
    let mut store = context.open_any()?;
    let passphrase = passphrase(passphrase_file, false)?;
    let names = crate::archive::import(&mut store, &bytes, &passphrase)?;
    println!("Imported {} account(s): {}", names.len(), names.join(", "));
    Ok(())
}
