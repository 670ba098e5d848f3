//! Alerts once per fleet: an alert row is written in the transaction that changes an account's
//! state (one commit wins however many hosts raced), and any daemon delivers it, claiming it for
//! a while so that a host that dies mid-delivery leaves it to another.

use std::time::Duration;

use super::{PgStore, now};
use crate::account::{AccountState, Deadline};
use crate::daemon::alert::AlertEvent;
use crate::store::StoreError;

/// How long a claimed alert is left to its host before another may deliver it.
const CLAIM: Duration = Duration::from_secs(60);
/// Alerts one daemon takes at a time.
const BATCH: i64 = 20;

/// An alert row to deliver.
pub struct OutboxAlert {
    pub id: i64,
    pub at: i64,
    pub account: String,
    pub event: AlertEvent,
    pub reason: String,
}

/// Writes the alert a commit calls for, in its transaction: entering `reauth_required` or
/// `client_error` alerts; returning to `active` after an alert says "recovered"; entering
/// `degraded` starts the clock `alert_long_degraded` reads. `changed`: the state moved.
pub(super) fn on_change(
    tx: &mut postgres::Transaction<'_>,
    id: i64,
    account: &str,
    (to, changed): (AccountState, bool),
    reason: Option<&str>,
    alerted: bool,
) -> Result<(), StoreError> {
    let event = match to {
        _ if !changed => None,
        AccountState::ReauthRequired => Some(AlertEvent::ReauthRequired),
        AccountState::ClientError => Some(AlertEvent::ClientError),
        AccountState::Active if alerted => Some(AlertEvent::Recovered),
        AccountState::Active | AccountState::Degraded => None,
    };
    let now_alerted = match to {
        AccountState::Active => false,
        AccountState::Degraded => alerted,
        AccountState::ReauthRequired | AccountState::ClientError => alerted || event.is_some(),
    };
    tx.execute(
        "UPDATE accounts SET alerted = $2,
             degraded_since = CASE WHEN $3 THEN COALESCE(degraded_since, $4) END
         WHERE id = $1",
        &[&id, &now_alerted, &(to == AccountState::Degraded), &now()],
    )?;
    if let Some(event) = event {
        insert(tx, account, event, reason.unwrap_or_default())?;
    }
    Ok(())
}

pub(super) fn insert(
    tx: &mut postgres::Transaction<'_>,
    account: &str,
    event: AlertEvent,
    reason: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO alerts (at, account, event, reason) VALUES ($1, $2, $3, $4)",
        &[&now(), &account, &event.as_str(), &reason],
    )?;
    Ok(())
}

impl PgStore {
    /// Writes one alert, through the outbox, for each account whose `deadline` falls before
    /// `until` and was not alerted yet, with the words `alert` gives it (account, date); any
    /// host may run it, one insert wins. Returns how many were written.
    pub fn alert_deadlines(
        &self,
        deadline: Deadline,
        until: i64,
        alert: fn(Deadline, &str, i64) -> (AlertEvent, String),
    ) -> Result<usize, StoreError> {
        let (column, skipped) = match deadline {
            Deadline::RefreshToken => ("refresh_expires_at", AccountState::ReauthRequired.as_str()),
            Deadline::ClientSecret => ("client_secret_expires_at", ""),
        };
        self.db.run(move |client| {
            let mut tx = client.transaction()?;
            // The column is one of two fixed names, never input.
            let due = tx.query(
                &format!(
                    "WITH due AS (
                         INSERT INTO deadline_alerts (account_id, deadline, at)
                         SELECT id, $1, {column} FROM accounts
                         WHERE {column} > $2 AND {column} <= $3 AND state <> $4
                         ON CONFLICT DO NOTHING
                         RETURNING account_id, at)
                     SELECT a.name, due.at FROM due JOIN accounts a ON a.id = due.account_id"
                ),
                &[&deadline.as_str(), &now(), &until, &skipped],
            )?;
            for row in &due {
                let (account, at): (String, i64) = (row.get(0), row.get(1));
                let (event, reason) = alert(deadline, &account, at);
                insert(&mut tx, &account, event, &reason)?;
            }
            tx.commit()?;
            Ok(due.len())
        })
    }

    /// Writes one `degraded` alert for each account degraded longer than `threshold` and not
    /// alerted yet; any host may run it, the row lock lets one win.
    pub fn alert_long_degraded(&self, threshold: u64) -> Result<(), StoreError> {
        let threshold = i64::try_from(threshold).unwrap_or(i64::MAX);
        self.db.run(move |client| {
            let mut tx = client.transaction()?;
            let at = now();
            let due = tx.query(
                "UPDATE accounts SET alerted = true
                 WHERE state = $1 AND NOT alerted AND degraded_since <= $2
                 RETURNING name, degraded_since",
                &[
                    &AccountState::Degraded.as_str(),
                    &at.saturating_sub(threshold),
                ],
            )?;
            for row in due {
                let since: i64 = row.get(1);
                let reason = format!(
                    "the provider has failed transiently for {} s",
                    at.saturating_sub(since)
                );
                insert(&mut tx, row.get(0), AlertEvent::Degraded, &reason)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Claims alerts no host is delivering, oldest first.
    pub fn claim_alerts(&self) -> Result<Vec<OutboxAlert>, StoreError> {
        let (host, claim) = (self.host.clone(), CLAIM.as_secs_f64());
        let rows = self.db.run(move |client| {
            Ok(client.query(
                "UPDATE alerts SET claimed_by = $1,
                     claim_until = clock_timestamp() + make_interval(secs => $2)
                 WHERE id IN (SELECT id FROM alerts
                     WHERE delivered_at IS NULL
                       AND (claim_until IS NULL OR claim_until < clock_timestamp())
                     ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING id, at, account, event, reason",
                &[&host, &claim, &BATCH],
            )?)
        })?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                Some(OutboxAlert {
                    id: row.get(0),
                    at: row.get(1),
                    account: row.get(2),
                    event: AlertEvent::parse(row.get(3))?,
                    reason: row.get(4),
                })
            })
            .collect())
    }

    /// Marks alerts handed to this host's sinks as delivered.
    pub fn mark_delivered(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        self.db.run(move |client| {
            client.execute(
                "UPDATE alerts SET delivered_at = clock_timestamp() WHERE id = ANY($1)",
                &[&ids],
            )?;
            Ok(())
        })
    }
}
