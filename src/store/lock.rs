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

impl AccountLock {
    /// Waits for account `name`'s lock and holds it until dropped.
    pub fn acquire(vault_dir: &Path, name: &str) -> Result<AccountLock, StoreError> {
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
            l_start: offset(name),
            l_len: 1,
            l_pid: 0,
        };
        loop {
            match fcntl(&file, FcntlArg::F_OFD_SETLKW(&byte)) {
                Ok(_) => return Ok(AccountLock { _file: file }),
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(failed(errno.into())),
            }
        }
    }
}

/// The byte account `name` locks: the same in every version and process, non-negative as a
/// file offset must be.
fn offset(name: &str) -> i64 {
    (crate::account::name_hash(name) >> 2) as i64
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
        // Another account is not held up.
        drop(AccountLock::acquire(dir.path(), "calendar").unwrap());
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
        assert_eq!(offset("mail"), offset("mail"));
        assert_ne!(offset("mail"), offset("mail2"));
        assert!(
            ["", "a", "account-99999"]
                .iter()
                .all(|name| offset(name) >= 0)
        );
    }
}
