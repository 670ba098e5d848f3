//! Grants on a fleet: a user or group *name* (uids differ between hosts), on every host or on
//! one. Each host resolves the names with its own user and group databases when it loads them.
//! Each row is signed with the key settings are signed with, so writing the database is not
//! enough to grant anyone anything.

use super::{PgStore, log_event};
use crate::account::Principal;
use crate::store::StoreError;
use crate::users;

/// A grant as a fleet stores it.
pub struct NamedGrant<'a> {
    /// "uid" or "gid", as `Principal::kind` spells them.
    pub kind: &'static str,
    /// The user or group name.
    pub name: &'a str,
    /// The one host it applies on; `None`: every host.
    pub host: Option<&'a str>,
}

impl NamedGrant<'_> {
    fn detail(&self) -> String {
        match self.host {
            Some(host) => format!("{}={}@{host}", self.kind, self.name),
            None => format!("{}={}", self.kind, self.name),
        }
    }
}

impl PgStore {
    /// Lets `grant` fetch account `account`'s access tokens (`allowed`), or stops it. Returns
    /// whether anything changed.
    pub fn set_grant(
        &mut self,
        account: &str,
        grant: &NamedGrant<'_>,
        allowed: bool,
    ) -> Result<bool, StoreError> {
        let (account, kind, name) = (account.to_owned(), grant.kind, grant.name.to_owned());
        let host = grant.host.unwrap_or_default().to_owned();
        let (detail, me) = (grant.detail(), self.host.clone());
        let (key, version) = (self.settings_key.clone(), self.key_version);
        self.db.run(move |client| {
            let mut tx = client.transaction()?;
            super::still_key_version(&mut tx, version)?;
            if !host.is_empty() {
                let enrolled: bool = tx
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM hosts WHERE host = $1)",
                        &[&host],
                    )?
                    .get(0);
                if !enrolled {
                    return Err(StoreError::UnknownHost(host));
                }
            }
            let id: i64 = tx
                .query_opt("SELECT id FROM accounts WHERE name = $1", &[&account])?
                .ok_or_else(|| StoreError::NoSuchAccount(account.clone()))?
                .get(0);
            let changed = if allowed {
                let mac = key.sign(&grant_message(id, kind, &name, &host));
                tx.execute(
                    "INSERT INTO grants (account_id, kind, name, host, mac)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (account_id, kind, name, host) DO UPDATE SET mac = excluded.mac
                     WHERE grants.mac <> excluded.mac",
                    &[&id, &kind, &name, &host, &mac],
                )? == 1
            } else {
                tx.execute(
                    "DELETE FROM grants
                     WHERE account_id = $1 AND kind = $2 AND name = $3 AND host = $4",
                    &[&id, &kind, &name, &host],
                )? == 1
            };
            let event = if allowed { "granted" } else { "grant_revoked" };
            if changed {
                log_event(&mut tx, &me, &account, event, Some(&detail))?;
            }
            tx.commit()?;
            Ok(changed)
        })
    }

    /// The grants that apply on this host, as (account name, principal): names this host does
    /// not know, and rows not signed with the data key, grant nothing here.
    pub fn grants(&self) -> Result<Vec<(String, Principal)>, StoreError> {
        let me = self.host.clone();
        let rows: Vec<GrantRow> = self.db.run(move |client| {
            Ok(client
                .query(
                    "SELECT a.name, g.account_id, g.kind, g.name, g.host, g.mac FROM grants g
                         JOIN accounts a ON a.id = g.account_id
                     WHERE g.host IN ('', $1) ORDER BY a.name",
                    &[&me],
                )?
                .iter()
                .map(|row| GrantRow {
                    account: row.get(0),
                    account_id: row.get(1),
                    kind: row.get(2),
                    name: row.get(3),
                    host: row.get(4),
                    mac: row.get(5),
                })
                .collect())
        })?;
        let (uids, gids) = (users::uids_by_name(), users::gids_by_name());
        Ok(rows
            .into_iter()
            .filter(|row| {
                let message = grant_message(row.account_id, &row.kind, &row.name, &row.host);
                self.settings_key.verify(&message, &row.mac)
            })
            .filter_map(
                |GrantRow {
                     account,
                     kind,
                     name,
                     ..
                 }| {
                    let ids = if kind == Principal::Uid(0).kind() {
                        &uids
                    } else {
                        &gids
                    };
                    let principal = Principal::from_parts(&kind, *ids.get(&name)?)?;
                    Some((account, principal))
                },
            )
            .collect())
    }
}

struct GrantRow {
    account: String,
    account_id: i64,
    kind: String,
    name: String,
    host: String,
    mac: Vec<u8>,
}

/// What a grant's MAC covers: the account's id (a row moved to another account fails) and the
/// grant itself.
pub(super) fn grant_message(account_id: i64, kind: &str, name: &str, host: &str) -> Vec<u8> {
    format!("tokenvault fleet grant\0{account_id}\0{kind}\0{name}\0{host}").into_bytes()
}
