//! The daemon's audit log: who (uid, pid) got which account's token, and every state change.
//! Never a token value. Lines are JSON, appended to `audit.log` in the vault directory (0600).
//!
//! Records go through a channel to a writer task, so answering a request never waits on disk.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// One answer to a token request.
    Token {
        at: i64,
        uid: u32,
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
        let file = crate::files::open_append_nofollow(&vault_dir.join("audit.log"))?;
        let (sender, mut receiver) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
            let mut flush = tokio::time::interval(FLUSH_EVERY);
            loop {
                tokio::select! {
                    received = receiver.recv() => match received {
                        Some(Message::Record(record)) => write_line(&mut out, &record),
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

fn write_line(out: &mut impl Write, record: &Record) {
    if serde_json::to_writer(&mut *out, record).is_ok() {
        let _ = out.write_all(b"\n");
    }
}
