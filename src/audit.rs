//! The daemon's audit log: who (uid, pid) got which account's token, and every state change.
//! Never a token value. Lines are JSON, appended to `audit.log` in the vault directory (0600).
//!
//! Records go through a channel to a writer task, so answering a request never waits on disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::sync::mpsc;

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
        from: &'static str,
        to: &'static str,
        reason: Option<String>,
    },
}

/// Lines reach the file at least this often (and when the buffer fills), so a burst of requests
/// costs one write, not one per request.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

enum Message {
    Record(Record),
    /// Write out everything queued, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Audit {
    sender: mpsc::UnboundedSender<Message>,
}

impl Audit {
    /// Opens (appends to) `audit.log` in `vault_dir` and starts its writer task.
    pub fn start(vault_dir: &Path) -> std::io::Result<Audit> {
        let mut out = AuditFile::open(vault_dir.join("audit.log"))?;
        let (sender, mut receiver) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            let mut flush = tokio::time::interval(FLUSH_EVERY);
            loop {
                tokio::select! {
                    received = receiver.recv() => match received {
                        Some(Message::Record(record)) => out.write_record(&record),
                        Some(Message::Flush(done)) => {
                            let _ = out.flush();
                            let _ = done.send(());
                        }
                        None => break,
                    },
                    _ = flush.tick() => {
                        let _ = out.flush();
                    }
                }
            }
            let _ = out.flush();
        });
        Ok(Audit { sender })
    }

    pub fn record(&self, record: Record) {
        // The writer lives as long as the runtime; after that there is nobody left to record.
        let _ = self.sender.send(Message::Record(record));
    }

    /// Waits until everything recorded so far is in the file (at shutdown).
    pub async fn flush(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

/// Past this size `audit.log` becomes `audit.log.1` (replacing the previous one) and a new log
/// starts: however many requests a caller makes, the log takes at most twice this on disk.
const ROTATE_AT: u64 = 16 << 20;

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
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        if std::fs::rename(&self.path, &old).is_err() {
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
