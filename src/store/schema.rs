//! Migrations from `schema/`, applied in order at open; the version is `PRAGMA user_version`.

use std::path::Path;

use rusqlite::Connection;

use super::{StoreError, corrupt};

const MIGRATIONS: &[&str] = &[
    include_str!("../../schema/001_initial.sql"),
    include_str!("../../schema/002_grants.sql"),
    include_str!("../../schema/003_validation_schedule.sql"),
    include_str!("../../schema/004_refresh_before.sql"),
    include_str!("../../schema/005_settings_mac.sql"),
    include_str!("../../schema/006_generation.sql"),
    include_str!("../../schema/007_client_secret_expiry.sql"),
    include_str!("../../schema/008_key_rotation.sql"),
];

/// Brings the schema up to date. `fresh` is true only for a database `vault init` just created:
/// an existing file at version 0 is not a tokenvault vault, and is left untouched.
pub(super) fn migrate(conn: &mut Connection, path: &Path, fresh: bool) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|err| corrupt(path, err))?;
    if version == 0 && !fresh {
        return Err(corrupt(path, "no tokenvault schema in it"));
    }
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew(path.to_owned(), version));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql).map_err(|err| corrupt(path, err))?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
