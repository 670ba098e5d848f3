//! Secrets stay sealed: on disk, across rows, in every output.

use crate::fake_oauth::OfflineRule;
use crate::support::TestVault;
use crate::{add_with_browser, token};

#[test]
fn ciphertext_moved_to_another_account_fails_to_open() {
    let fake = crate::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "alice").ok();
    add_with_browser(&vault, &fake, "bob").ok();
    {
        let db = rusqlite::Connection::open(vault.db_path()).unwrap();
        let moved = db
            .execute(
                "UPDATE secrets SET sealed = (SELECT sealed FROM secrets WHERE kind = 'refresh_token'
                     AND account_id = (SELECT id FROM accounts WHERE name = 'alice'))
                 WHERE kind = 'refresh_token' AND account_id = (SELECT id FROM accounts WHERE name = 'bob')",
                [],
            )
            .unwrap();
        assert_eq!(moved, 1);
    }
    vault
        .run(&["token", "bob", "--min-valid", "7200"])
        .fails_with(1, "altered or moved");
    // The untouched account still works.
    token(&vault, &fake, &["alice", "--min-valid", "7200"]);
}

#[test]
fn secret_kind_is_bound_too() {
    let fake = crate::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "carol").ok();
    {
        let db = rusqlite::Connection::open(vault.db_path()).unwrap();
        // Present the (sealed) client secret as the refresh token.
        db.execute(
            "UPDATE secrets SET sealed = (SELECT sealed FROM secrets WHERE kind = 'client_secret')
             WHERE kind = 'refresh_token'",
            [],
        )
        .unwrap();
    }
    vault
        .run(&["token", "carol", "--min-valid", "7200"])
        .fails_with(1, "altered or moved");
}

#[test]
fn vault_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let vault = TestVault::new(None);
    let mode = std::fs::metadata(&vault.dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}
