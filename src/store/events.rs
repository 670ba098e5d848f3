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

impl super::Store {
    /// Records `event` with `detail` for `account` unless that exact record exists already; true
    /// when it is new — what makes an alert go out once, across restarts too.
    pub fn record_once(
        &mut self,
        account: &str,
        event: &str,
        detail: &str,
    ) -> Result<bool, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let seen: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM events WHERE account = ?1 AND event = ?2 AND detail = ?3)",
            params![account, event, detail],
            |row| row.get(0),
        )?;
        if !seen {
            log_event(&tx, account, event, Some(detail))?;
        }
        tx.commit()?;
        Ok(!seen)
    }
}
