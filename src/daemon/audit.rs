//! The daemon's audit log: who (uid, pid) got which account's token, and every state change.
//! Never a token value. Lines are JSON, appended to `audit.log` in the vault directory (0600).
//!
//! Records wait in a queue for a writer task, so answering a request never waits on disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::account::AccountState;

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// One answer to a token request.
    Token {
        at: i64,
        /// The caller's uid: from SO_PEERCRED on the socket; on the metadata endpoint's TCP, from
        /// the kernel's socket table when it can be found there.
        uid: Option<u32>,
        pid: Option<i32>,
        account: String,
        status: u16,
    },
    /// An account's state changed in the daemon.
    State {
        at: i64,
        account: String,
        from: AccountState,
        to: AccountState,
        reason: Option<String>,
    },
    /// The daemon rotated an account's own key: the provider's key ids, never the key.
    KeyRotated {
        at: i64,
        account: String,
        key_id: String,
        replaced: Option<String>,
    },
}

/// Lines reach the file at least this often (sooner when `WAKE_AT` records wait), so a burst
/// of requests costs one write, not one per request.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// Records waiting that make the writer run before its next tick.
const WAKE_AT: usize = 1024;

/// The audit log's handle. Recording only appends to a queue under a lock, without waking
/// anyone: the token fast path runs on its own thread, and waking the writer on the main runtime
/// for every answer would cost more than the answer.
#[derive(Clone)]
pub struct Audit {
    shared: Arc<Shared>,
}

struct Shared {
    waiting: Mutex<Vec<Record>>,
    file: Mutex<AuditFile>,
    /// Tells the writer that `WAKE_AT` records wait.
    full: tokio::sync::Notify,
}

impl Audit {
    /// Opens (appends to) `audit.log` in `vault_dir` and starts its writer task.
    pub fn start(vault_dir: &Path) -> std::io::Result<Audit> {
        let file = AuditFile::open(vault_dir.join("audit.log"))?;
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Vec::new()),
            file: Mutex::new(file),
            full: tokio::sync::Notify::new(),
        });
        let writer = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = writer.full.notified() => {}
                }
                writer.write_waiting();
            }
        });
        Ok(Audit { shared })
    }

    pub fn record(&self, record: Record) {
        let Ok(mut waiting) = self.shared.waiting.lock() else {
            return;
        };
        waiting.push(record);
        if waiting.len() == WAKE_AT {
            self.shared.full.notify_one();
        }
    }

    /// Writes everything recorded so far to the file (at shutdown).
    pub async fn flush(&self) {
        self.shared.write_waiting();
    }
}

impl Shared {
    fn write_waiting(&self) {
        let batch = match self.waiting.lock() {
            Ok(mut waiting) => std::mem::take(&mut *waiting),
            Err(_) => return,
        };
        let Ok(mut file) = self.file.lock() else {
            return;
        };
        for record in &batch {
            file.write_record(record);
        }
        let _ = file.flush();
    }
}

/// Past this size `audit.log` becomes `audit.log.1` (the older ones move up to `.2`, `.3`, and
/// the oldest is dropped) and a new log starts: however many requests callers make, the logs
/// take at most `KEEP + 1` times this on disk.
const ROTATE_AT: u64 = 16 << 20;
/// Rotated logs kept.
pub const KEEP: u32 = 3;

/// `audit.log.N`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The open log, and how much it holds.
struct AuditFile {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    size: u64,
}

impl AuditFile {
    fn open(path: PathBuf) -> std::io::Result<AuditFile> {
        let file = crate::files::open_append_nofollow(&path)?;
        let size = file.metadata()?.len();
        Ok(AuditFile {
            path,
            out: std::io::BufWriter::with_capacity(64 * 1024, file),
            size,
        })
    }

    fn write_record(&mut self, record: &Record) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        if self.out.write_all(&line).is_ok() {
            self.size += line.len() as u64;
        }
        if self.size >= ROTATE_AT {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        let _ = self.out.flush();
        for n in (1..KEEP).rev() {
            let _ = std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1));
        }
        if std::fs::rename(&self.path, rotated(&self.path, 1)).is_err() {
            return;
        }
        match AuditFile::open(self.path.clone()) {
            Ok(fresh) => *self = fresh,
            Err(err) => crate::log::emit(
                crate::log::Level::Warning,
                "cannot start a new audit log",
                &[("error", &err.to_string())],
            ),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_and_keeps_three_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditFile::open(dir.path().join("audit.log")).unwrap();
        let record = Record::State {
            at: 0,
            account: "a".repeat(1024),
            from: AccountState::Active,
            to: AccountState::Degraded,
            reason: None,
        };
        // Five logs' worth of lines: the current one and three rotated remain.
        let lines = 5 * ROTATE_AT as usize / 1100;
        for _ in 0..lines {
            log.write_record(&record);
        }
        log.flush().unwrap();
        let path = dir.path().join("audit.log");
        for n in 1..=KEEP {
            let size = std::fs::metadata(rotated(&path, n)).unwrap().len();
            assert!(size >= ROTATE_AT, "audit.log.{n} is {size} bytes");
        }
        assert!(!rotated(&path, KEEP + 1).exists());
        assert!(std::fs::metadata(&path).unwrap().len() < ROTATE_AT);
    }
}
