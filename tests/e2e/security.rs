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

#[test]
fn rekey_reseals_everything_under_a_new_master_key() {
    let fake = crate::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::uninitialized(Some(&fake));
    let old_key = vault.root.path().join("old.key");
    let new_key = vault.root.path().join("new.key");
    let with_key = |key: &std::path::Path, args: &[&str]| {
        let mut command = vault.command(&[&["--key-file", key.to_str().unwrap()], args].concat());
        command.env_remove("VAULT_MASTER_KEY");
        vault.run_command(command, None)
    };
    with_key(&old_key, &["init"]).ok();
    let secret = crate::client_secret_file(&vault);
    let mut add = vault.command(&[
        "--key-file",
        old_key.to_str().unwrap(),
        "add-account",
        "acct",
        "--issuer",
        &fake.base,
        "--client-id",
        crate::fake_oauth::CLIENT_ID,
        "--client-secret-file",
        secret.to_str().unwrap(),
        "--timeout",
        "30",
    ]);
    add.env_remove("VAULT_MASTER_KEY");
    vault.run_command(add, None).ok();
    let before = std::fs::read(vault.db_path()).unwrap();

    with_key(
        &old_key,
        &["rekey", "--new-key-file", new_key.to_str().unwrap()],
    )
    .ok();
    with_key(
        &old_key,
        &["rekey", "--new-key-file", new_key.to_str().unwrap()],
    )
    .fails_with(6, "does not open this vault");
    // The vault records its new key file; the secrets open with it, refresh works.
    let mut run = vault.command(&["token", "acct", "--no-daemon", "--min-valid", "7200"]);
    run.env_remove("VAULT_MASTER_KEY");
    let token = vault.run_command(run, None);
    token.ok();
    assert!(fake.is_access_token(token.stdout.trim()));
    assert_ne!(std::fs::read(vault.db_path()).unwrap(), before);
    with_key(
        &new_key,
        &["rekey", "--new-key-file", new_key.to_str().unwrap()],
    )
    .fails_with(1, "exists");
    vault.assert_no_plaintext_on_disk();
}
