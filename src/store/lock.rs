//! Refresh locks shared by every process using the vault (`vault token`, `vault serve`, …).
//!
//! Two refreshes of one rotating refresh token in parallel kill the whole grant at real
//! providers, so a refresh is only ever done while holding its account's lock. All accounts
//! share one file, `refresh.lock` (100,000 accounts once left 100,000 lock files): each account
//! locks one byte of it, at an offset hashed from its name, with an open-file-description lock.
//! Such a lock belongs to one opening of the file, so two guards in one process exclude each
//! other as two processes do, and it goes when that opening closes — a crash included. Two
//! accounts whose hashes meet merely wait for each other.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

use super::StoreError;

/// The lock file, in the vault directory.
pub const LOCK_FILE: &str = "refresh.lock";

pub struct AccountLock {
    // Closing the file releases the lock.
    _file: File,
}

/// What an account is locked for: each excludes only its own kind.
#[derive(Clone, Copy)]
pub enum Purpose {
    /// A call that spends or replaces the account's credential, and its commit.
    Refresh,
    /// A rotation of the account's own key at the provider (minutes at worst, while refreshes
    /// go on).
    KeyRotation,
}

impl AccountLock {
    /// Waits for account `name`'s refresh lock and holds it until dropped.
    pub fn acquire(vault_dir: &Path, name: &str) -> Result<AccountLock, StoreError> {
        AccountLock::acquire_for(vault_dir, name, Purpose::Refresh)
    }

    /// Waits for account `name`'s lock for `purpose` and holds it until dropped.
    pub fn acquire_for(
        vault_dir: &Path,
        name: &str,
        purpose: Purpose,
    ) -> Result<AccountLock, StoreError> {
        AccountLock::take(vault_dir, name, purpose, true)?
            .ok_or_else(|| StoreError::Database("a waiting lock returned early".into()))
    }

    /// Account `name`'s lock for `purpose` if no one holds it now; `None` if someone does.
    pub fn try_acquire_for(
        vault_dir: &Path,
        name: &str,
        purpose: Purpose,
    ) -> Result<Option<AccountLock>, StoreError> {
        AccountLock::take(vault_dir, name, purpose, false)
    }

    fn take(
        vault_dir: &Path,
        name: &str,
        purpose: Purpose,
        wait: bool,
    ) -> Result<Option<AccountLock>, StoreError> {
        let path = vault_dir.join(LOCK_FILE);
        let failed = |source: std::io::Error| StoreError::Dir {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(failed)?;
        let byte = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: offset(name, purpose),
            l_len: 1,
            l_pid: 0,
        };
        loop {
            let taken = if wait {
                fcntl(&file, FcntlArg::F_OFD_SETLKW(&byte))
            } else {
                fcntl(&file, FcntlArg::F_OFD_SETLK(&byte))
            };
            match taken {
                Ok(_) => return Ok(Some(AccountLock { _file: file })),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN | Errno::EACCES) if !wait => return Ok(None),
                Err(errno) => return Err(failed(errno.into())),
            }
        }
    }
}

/// The byte account `name` locks for `purpose`: the same in every version and process,
/// non-negative as a file offset must be; refresh bytes below 2^62, rotation bytes above.
fn offset(name: &str, purpose: Purpose) -> i64 {
    let byte = (crate::account::name_hash(name) >> 2) as i64;
    match purpose {
        Purpose::Refresh => byte,
        Purpose::KeyRotation => byte | 1 << 62,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_account_waits_for_its_holder_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let held = AccountLock::acquire(dir.path(), "mail").unwrap();
        // Another account is not held up, nor the same account's rotation.
        drop(AccountLock::acquire(dir.path(), "calendar").unwrap());
        drop(AccountLock::acquire_for(dir.path(), "mail", Purpose::KeyRotation).unwrap());
        let (sender, receiver) = mpsc::channel();
        let path = dir.path().to_owned();
        let waiter = std::thread::spawn(move || {
            let lock = AccountLock::acquire(&path, "mail").unwrap();
            sender.send(()).unwrap();
            drop(lock);
        });
        assert!(
            receiver.recv_timeout(Duration::from_millis(300)).is_err(),
            "a second guard of the same account in the same process got the lock"
        );
        drop(held);
        receiver.recv_timeout(Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "one lock file for every account");
    }

    #[test]
    fn offsets_are_stable_and_valid() {
        let refresh = |name| offset(name, Purpose::Refresh);
        let rotation = |name| offset(name, Purpose::KeyRotation);
        assert_eq!(refresh("mail"), refresh("mail"));
        assert_ne!(refresh("mail"), refresh("mail2"));
        for name in ["", "a", "account-99999", "mail"] {
            assert!(refresh(name) >= 0 && rotation(name) >= 0);
            assert_ne!(
                refresh(name),
                rotation(name),
                "a rotation must not hold up refreshes"
            );
        }
    }
}
