//! `vault install-service`: systemd user units for a socket-activated daemon.

use std::path::PathBuf;

use super::{Context, default_vault_dir};
use crate::error::Error;

pub(super) fn install_service(context: &Context, dir: Option<PathBuf>) -> Result<(), Error> {
    let dir = dir.unwrap_or_else(|| {
        directories::BaseDirs::new()
            .map(|base| base.config_dir().join("systemd/user"))
            .unwrap_or_else(|| PathBuf::from(".config/systemd/user"))
    });
    let exe = std::env::current_exe()
        .map_err(|err| Error::Internal(format!("cannot find this program's path: {err}")))?;
    let vault_dir = (context.dir != default_vault_dir()).then_some(context.dir.as_path());
    std::fs::create_dir_all(&dir)
        .map_err(|err| Error::Input(format!("cannot create {}: {err}", dir.display())))?;
    for (name, text) in crate::service::unit_files(&exe, vault_dir) {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|err| Error::Input(format!("cannot write {}: {err}", path.display())))?;
        println!("wrote {}", path.display());
    }
    println!(
        "Next: systemctl --user daemon-reload && systemctl --user enable --now {}",
        crate::service::SOCKET_UNIT
    );
    Ok(())
}
