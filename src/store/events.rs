//! The vault's own event log (`events` table): what happened to which account, never a secret.

use rusqlite::params;

use super::{StoreError, now};

pub(super) fn log_event(
    tx: &rusqlite::Transaction<'_>,
    account: &str,
    event: &str,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO events (at, account, event, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now(), account, event, detail],
    )?;
    Ok(())
}
