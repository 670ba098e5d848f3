//! Per-account locks shared by every process using the vault (`vault token`, `vault serve`).
//!
//! Two refreshes of one rotating refresh token in parallel kill the whole grant at real
//! providers, so a refresh is only ever done while holding its account's lock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{StoreError, create_private_dir};

pub struct AccountLock {
    // Dropping the file releases the lock.
    _file: File,
}

impl AccountLock {
    pub fn acquire(vault_dir: &Path, name: &str) -> Result<AccountLock, StoreError> {
        // The name becomes a file name: no account can have a name that escapes the directory.
        if crate::account::validate_name(name).is_err() {
            return Err(StoreError::NoSuchAccount(name.to_owned()));
        }
        let dir = vault_dir.join("locks");
        create_private_dir(&dir)?;
        let path = dir.join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|source| StoreError::Dir {
                path: path.clone(),
                source,
            })?;
        file.lock()
            .map_err(|source| StoreError::Dir { path, source })?;
        Ok(AccountLock { _file: file })
    }
}
