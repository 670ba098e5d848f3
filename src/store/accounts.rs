//! Account rows: adding (one or many, atomically), reading (settings checked against their
//! tag), removing, grants, per-account settings, and the summaries the daemon loads.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::commits::{TokenUpdate, apply_token_update};
use super::events::log_event;
use super::sealing::{put_secret, settings_message, sign_settings};
use super::{Store, StoreError, now};
use crate::account::{
    Account, AccountConfig, AccountState, AccountSummary, Deadline, Grant, Principal, SecretKind,
};
use crate::crypto::{Key, MacKey};
use crate::secret::SecretString;

impl Store {
    /// Stores a new account and its secrets in one transaction: all of it or nothing.
    pub fn insert_account(
        &mut self,
        name: &str,
        config: &AccountConfig,
        secrets: &[(SecretKind, &SecretString)],
        tokens: &TokenUpdate<'_>,
    ) -> Result<(), StoreError> {
        self.insert_accounts(&[NewAccount {
            name,
            config,
            secrets,
            tokens,
            validation_schedule: None,
            refresh_before: None,
            client_secret_expires_at: None,
            key_created_at: None,
            rotate_every: None,
        }])
    }

    /// Stores new accounts in one transaction: all of them, or none (a taken name, a failed
    /// write) — what `vault import` promises.
    pub fn insert_accounts(&mut self, accounts: &[NewAccount<'_>]) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for account in accounts {
            insert_in(
                &tx,
                &self.data_key,
                &self.settings_key,
                self.key_version,
                account,
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn account(&self, name: &str) -> Result<Account, StoreError> {
        self.conn
            .query_row(
                &format!("{} WHERE name = ?1", select_accounts()),
                [name],
                |row| read_account(row, &self.settings_key),
            )
            .optional()?
            .ok_or_else(|| StoreError::NoSuchAccount(name.to_owned()))?
    }

    /// Every account, by name. Read in table order and sorted here: walking the name index
    /// would fetch each row from a page of its own (a fifth of `vault status` at 100k accounts).
    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let mut stmt = self.conn.prepare(&select_accounts())?;
        let rows = stmt.query_map([], |row| read_account(row, &self.settings_key))?;
        let mut accounts = rows.map(|row| row?).collect::<Result<Vec<_>, _>>()?;
        accounts.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(accounts)
    }

    pub fn remove_account(&mut self, name: &str) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM secrets WHERE account_id = (SELECT id FROM accounts WHERE name = ?1)",
            [name],
        )?;
        if tx.execute("DELETE FROM accounts WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NoSuchAccount(name.to_owned()));
        }
        log_event(&tx, name, "removed", None)?;
        tx.commit()?;
        Ok(())
    }

    /// Lets `principal` fetch account `name`'s access tokens (`allowed`), or stops it.
    /// Returns whether anything changed.
    pub fn set_grant(
        &mut self,
        name: &str,
        principal: Principal,
        allowed: bool,
    ) -> Result<bool, StoreError> {
        let account = self.account(name)?;
        let (sql, event) = if allowed {
            (
                "INSERT OR IGNORE INTO grants (account_id, kind, id) VALUES (?1, ?2, ?3)",
                "granted",
            )
        } else {
            (
                "DELETE FROM grants WHERE account_id = ?1 AND kind = ?2 AND id = ?3",
                "grant_revoked",
            )
        };
        let tx = self.conn.transaction()?;
        let changed = tx.execute(sql, params![account.id, principal.kind(), principal.id()])? == 1;
        if changed {
            let detail = format!("{}={}", principal.kind(), principal.id());
            log_event(&tx, name, event, Some(&detail))?;
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Records whose grant the account holds (after a login by another, allowed, user), with
    /// its settings signed anew.
    pub fn set_identity(
        &mut self,
        account: &Account,
        identity: Option<&crate::oauth::identity::Identity>,
    ) -> Result<(), StoreError> {
        let config_json = settings_with_identity(account, identity)?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE accounts SET config = ?2 WHERE id = ?1",
            params![account.id, config_json],
        )?;
        sign_settings(
            &tx,
            &self.settings_key,
            account.id,
            &account.name,
            &config_json,
        )?;
        let shown = identity.map(|identity| identity.shown().to_owned());
        log_event(&tx, &account.name, "identity", shown.as_deref())?;
        tx.commit()?;
        Ok(())
    }

    /// Sets (or, with `None`, clears) an account's own validation schedule.
    pub fn set_validation_schedule(
        &mut self,
        name: &str,
        schedule: Option<&str>,
    ) -> Result<(), StoreError> {
        self.set_column(name, "validation_schedule", &schedule)
    }

    /// Sets (or, with `None`, clears) an account's own refresh-ahead margin in seconds.
    pub fn set_refresh_before(
        &mut self,
        name: &str,
        seconds: Option<u64>,
    ) -> Result<(), StoreError> {
        self.set_column(name, "refresh_before", &seconds)
    }

    /// Sets (or, with `None`, clears) how often the daemon rotates the account's own key.
    pub fn set_rotate_every(&mut self, name: &str, seconds: Option<i64>) -> Result<(), StoreError> {
        self.set_column(name, "rotate_every", &seconds)
    }

    /// One per-account setting; `column` is one of the fixed names above, never user input.
    fn set_column(
        &mut self,
        name: &str,
        column: &'static str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            &format!("UPDATE accounts SET {column} = ?2 WHERE name = ?1"),
            params![name, value],
        )?;
        if changed == 0 {
            return Err(StoreError::NoSuchAccount(name.to_owned()));
        }
        Ok(())
    }

    /// Every grant, as (account name, principal).
    pub fn grants(&self) -> Result<Vec<(String, Principal)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT a.name, g.kind, g.id FROM grants g JOIN accounts a ON a.id = g.account_id ORDER BY a.name",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, u32>(2)?,
            ))
        })?;
        let mut grants = Vec::new();
        for row in rows {
            let (name, kind, id) = row?;
            if let Some(principal) = Principal::from_parts(&kind, id) {
                grants.push((name, principal));
            }
        }
        Ok(grants)
    }

    /// Every account's summary, by name, without parsing settings (`vault status`, doctor).
    pub fn summaries(&self) -> Result<Vec<AccountSummary>, StoreError> {
        let mut summaries = Vec::new();
        self.visit_summaries(|row| summaries.push(row.to_owned_summary()))?;
        // Sorted here rather than by the name index, as `accounts` does.
        summaries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(summaries)
    }

    /// Shows `visit` every account's summary, borrowed from its row, in table order: the daemon
    /// loads 100,000s of them, and a copy of each name, scope and error made only to be dropped
    /// again would leave its memory full of holes.
    pub fn visit_summaries(
        &self,
        mut visit: impl FnMut(&SummaryRow<'_>),
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, state, access_expires_at, last_refresh_at, last_validated_at,
                    validation_schedule, refresh_before, json_extract(config, '$.scopes'),
                    last_error
             FROM accounts",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let name = text(row, 0)?.unwrap_or_default();
            let state = text(row, 1)?.unwrap_or_default();
            let state = AccountState::parse(state).ok_or_else(|| {
                StoreError::BadConfig(name.to_owned(), format!("unknown state {state:?}"))
            })?;
            visit(&SummaryRow {
                name,
                state,
                access_expires_at: row.get(2)?,
                last_refresh_at: row.get(3)?,
                last_validated_at: row.get(4)?,
                validation_schedule: text(row, 5)?,
                refresh_before: row.get(6)?,
                scopes: text(row, 7)?,
                last_error: text(row, 8)?,
            });
        }
        Ok(())
    }

    /// Every known date of a `deadline`, as (account, date).
    pub fn deadlines(&self, deadline: Deadline) -> Result<Vec<(String, i64)>, StoreError> {
        let column = deadline_column(deadline);
        let mut stmt = self.conn.prepare(&format!(
            "SELECT name, {column} FROM accounts WHERE {column} IS NOT NULL"
        ))?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The accounts with a `deadline` before `until` (and after now) not alerted yet, as (name,
    /// date); each is recorded as the deadline's event in the same transaction, so it is alerted
    /// once, across restarts too. A refresh token's deadline no longer matters once the account
    /// needs a new login anyway.
    pub fn take_deadlines(
        &mut self,
        deadline: Deadline,
        until: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let column = deadline_column(deadline);
        let skipped_state = match deadline {
            Deadline::RefreshToken => AccountState::ReauthRequired.as_str(),
            Deadline::ClientSecret => "",
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let due: Vec<(String, i64)> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT a.name, a.{column} FROM accounts a
                 WHERE a.{column} > ?1 AND a.{column} <= ?2 AND a.state != ?3
                   AND NOT EXISTS (SELECT 1 FROM events e WHERE e.account = a.name
                       AND e.event = ?4 AND e.detail = CAST(a.{column} AS TEXT))"
            ))?;
            let rows = stmt.query_map(
                params![now(), until, skipped_state, deadline.as_str()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            rows.collect::<Result<_, _>>()?
        };
        for (name, at) in &due {
            log_event(&tx, name, deadline.as_str(), Some(&at.to_string()))?;
        }
        tx.commit()?;
        Ok(due)
    }
}

/// The column holding each account's date of `deadline` (a fixed name, never input).
fn deadline_column(deadline: Deadline) -> &'static str {
    match deadline {
        Deadline::RefreshToken => "refresh_expires_at",
        Deadline::ClientSecret => "client_secret_expires_at",
    }
}

/// Column `index` of `row` as text borrowed from the row, `None` for NULL.
fn text<'r>(row: &'r rusqlite::Row<'_>, index: usize) -> Result<Option<&'r str>, StoreError> {
    row.get_ref(index)?.as_str_or_null().map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(err))
            .into()
    })
}

/// One account's summary borrowed from its row (see `Store::visit_summaries`).
pub struct SummaryRow<'a> {
    pub name: &'a str,
    pub state: AccountState,
    pub access_expires_at: Option<i64>,
    pub last_refresh_at: Option<i64>,
    pub last_validated_at: Option<i64>,
    pub validation_schedule: Option<&'a str>,
    pub refresh_before: Option<u64>,
    /// The configured scopes as stored, a JSON array: many accounts share the same text.
    pub scopes: Option<&'a str>,
    pub last_error: Option<&'a str>,
}

impl SummaryRow<'_> {
    /// The configured scopes, space-separated.
    pub fn scope(&self) -> String {
        self.scopes
            .and_then(|scopes| serde_json::from_str::<Vec<String>>(scopes).ok())
            .map(|scopes| scopes.join(" "))
            .unwrap_or_default()
    }

    fn to_owned_summary(&self) -> AccountSummary {
        AccountSummary {
            name: self.name.to_owned(),
            state: self.state,
            access_expires_at: self.access_expires_at,
            last_refresh_at: self.last_refresh_at,
            last_validated_at: self.last_validated_at,
            validation_schedule: self.validation_schedule.map(str::to_owned),
            refresh_before: self.refresh_before,
            scope: self.scope(),
            last_error: self.last_error.map(str::to_owned),
        }
    }
}

/// An account to store, with its secrets and its first tokens.
pub struct NewAccount<'a> {
    pub name: &'a str,
    pub config: &'a AccountConfig,
    pub secrets: &'a [(SecretKind, &'a SecretString)],
    pub tokens: &'a TokenUpdate<'a>,
    pub validation_schedule: Option<&'a str>,
    pub refresh_before: Option<u64>,
    pub client_secret_expires_at: Option<i64>,
    pub key_created_at: Option<i64>,
    pub rotate_every: Option<i64>,
}

/// The columns `read_account` reads, as `select_accounts` selects them: each name is written
/// once, and `column` finds its position at compile time (looking names up per row cost
/// `vault status` a fifth of its time with 100,000 accounts).
/// Whether an account keeps a previous client secret, read with it (the column after `COLUMNS`):
/// a refresh then reads that secret only when there is one.
const KEEPS_PREVIOUS_CLIENT_SECRET: &str = "EXISTS (SELECT 1 FROM secrets
    WHERE secrets.account_id = accounts.id AND secrets.kind = 'previous_client_secret')";

const COLUMNS: [&str; 17] = [
    "id",
    "name",
    "config",
    "state",
    "created_at",
    "last_refresh_at",
    "last_validated_at",
    "last_error",
    "access_expires_at",
    "refresh_expires_at",
    "client_secret_expires_at",
    "key_created_at",
    "rotate_every",
    "validation_schedule",
    "refresh_before",
    "config_mac",
    "generation",
];

/// `SELECT` of every column `read_account` reads.
fn select_accounts() -> String {
    format!(
        "SELECT {}, {KEEPS_PREVIOUS_CLIENT_SECRET} FROM accounts",
        COLUMNS.join(", ")
    )
}

/// The position of `name` in `COLUMNS`; a name not there fails the build.
const fn column(name: &str) -> usize {
    let mut index = 0;
    while index < COLUMNS.len() {
        if same(COLUMNS[index].as_bytes(), name.as_bytes()) {
            return index;
        }
        index += 1;
    }
    panic!("not one of COLUMNS")
}

const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The settings JSON of `account` recording `identity` as whose grant it holds (a login by
/// another, allowed, user): what both backends store and sign anew.
pub(super) fn settings_with_identity(
    account: &Account,
    identity: Option<&crate::oauth::identity::Identity>,
) -> Result<String, StoreError> {
    let mut config = account.config.clone();
    if let Grant::RefreshToken { identity: held, .. } = &mut config.grant {
        *held = identity.cloned();
    }
    serde_json::to_string(&config)
        .map_err(|err| StoreError::BadConfig(account.name.clone(), err.to_string()))
}

/// An account's settings and state as stored, used only when their tag vouches for them (the
/// same rule for every backend).
pub(super) fn vouched_settings(
    settings_key: &MacKey,
    id: i64,
    name: &str,
    config: &str,
    tag: Option<Vec<u8>>,
    state: &str,
) -> Result<(AccountConfig, AccountState), StoreError> {
    let vouched =
        tag.is_some_and(|tag| settings_key.verify(&settings_message(id, name, config), &tag));
    if !vouched {
        return Err(StoreError::SettingsTampered(name.to_owned()));
    }
    let config = serde_json::from_str::<AccountConfig>(config)
        .map_err(|err| StoreError::BadConfig(name.to_owned(), err.to_string()))?;
    let state = AccountState::parse(state).ok_or_else(|| {
        StoreError::BadConfig(name.to_owned(), format!("unknown state {state:?}"))
    })?;
    Ok((config, state))
}

/// One row of `select_accounts`; its settings are used only when their tag vouches for them.
fn read_account(
    row: &rusqlite::Row<'_>,
    settings_key: &MacKey,
) -> rusqlite::Result<Result<Account, StoreError>> {
    let id: i64 = row.get(const { column("id") })?;
    let name: String = row.get(const { column("name") })?;
    let config: String = row.get(const { column("config") })?;
    let state: String = row.get(const { column("state") })?;
    let tag: Option<Vec<u8>> = row.get(const { column("config_mac") })?;
    let (config, state) = match vouched_settings(settings_key, id, &name, &config, tag, &state) {
        Ok(parsed) => parsed,
        Err(err) => return Ok(Err(err)),
    };
    Ok(Ok(Account {
        id,
        name,
        config,
        state,
        created_at: row.get(const { column("created_at") })?,
        last_refresh_at: row.get(const { column("last_refresh_at") })?,
        last_validated_at: row.get(const { column("last_validated_at") })?,
        last_error: row.get(const { column("last_error") })?,
        access_expires_at: row.get(const { column("access_expires_at") })?,
        refresh_expires_at: row.get(const { column("refresh_expires_at") })?,
        client_secret_expires_at: row.get(const { column("client_secret_expires_at") })?,
        key_created_at: row.get(const { column("key_created_at") })?,
        rotate_every: row.get(const { column("rotate_every") })?,
        validation_schedule: row.get(const { column("validation_schedule") })?,
        refresh_before: row.get(const { column("refresh_before") })?,
        generation: row.get(const { column("generation") })?,
        keeps_previous_client_secret: row.get(COLUMNS.len())?,
    }))
}

fn insert_in(
    tx: &rusqlite::Transaction<'_>,
    key: &Key,
    settings_key: &MacKey,
    key_version: i64,
    new: &NewAccount<'_>,
) -> Result<(), StoreError> {
    let name = new.name;
    let config_json = serde_json::to_string(new.config)
        .map_err(|err| StoreError::BadConfig(name.into(), err.to_string()))?;
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM accounts WHERE name = ?1)",
        [name],
        |row| row.get(0),
    )?;
    if exists {
        return Err(StoreError::AccountExists(name.to_owned()));
    }
    tx.execute(
        "INSERT INTO accounts (name, config, state, created_at, validation_schedule, refresh_before,
             client_secret_expires_at, key_created_at, rotate_every)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            name,
            config_json,
            AccountState::Active.as_str(),
            now(),
            new.validation_schedule,
            new.refresh_before,
            new.client_secret_expires_at,
            new.key_created_at,
            new.rotate_every
        ],
    )?;
    let id = tx.last_insert_rowid();
    sign_settings(tx, settings_key, id, name, &config_json)?;
    for (kind, value) in new.secrets {
        put_secret(tx, key, key_version, id, *kind, value)?;
    }
    apply_token_update(tx, key, key_version, id, new.tokens)?;
    log_event(tx, name, "added", Some(new.config.grant.kind().as_str()))?;
    Ok(())
}
