//! The daemon's audit log: who (uid, pid) got which account's token, and every state change.
//! Never a token value. Lines are JSON, appended to `audit.log` in the vault directory (0600).
//!
//! Records go through a channel to a writer task, so answering a request never waits on disk.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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

#[derive(Clone)]
pub struct Audit {
    sender: mpsc::UnboundedSender<Record>,
}

impl Audit {
    /// Opens (appends to) `audit.log` in `vault_dir` and starts its writer task.
    pub fn start(vault_dir: &Path) -> std::io::Result<Audit> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(vault_dir.join("audit.log"))?;
        let (sender, mut receiver) = mpsc::unbounded_channel::<Record>();
        tokio::spawn(async move {
            let mut out = std::io::BufWriter::new(file);
            while let Some(record) = receiver.recv().await {
                write_line(&mut out, &record);
                // Write what is queued, then flush once per burst.
                while let Ok(record) = receiver.try_recv() {
                    write_line(&mut out, &record);
                }
                let _ = out.flush();
            }
        });
        Ok(Audit { sender })
    }

    pub fn record(&self, record: Record) {
        // The writer only ends with the runtime; a record lost then is lost at shutdown anyway.
        let _ = self.sender.send(record);
    }
}

fn write_line(out: &mut impl Write, record: &Record) {
    if let Ok(line) = serde_json::to_string(record) {
        let _ = writeln!(out, "{line}");
    }
}
