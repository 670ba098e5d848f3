//! Secrets stay sealed: on disk, across rows, in every output.

use std::path::Path;

use crate::support::Scenario;
use crate::support::fake_oauth::OfflineRule;
use crate::support::{Run, TestVault};
use crate::support::{add_with_browser, token};

#[test]
fn ciphertext_moved_to_another_account_fails_to_open() {
    let Scenario { fake, vault } = Scenario::new().account("alice");
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
    let Scenario { fake: _fake, vault } = Scenario::new().account("carol");
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
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::uninitialized(Some(&fake));
    let old_key = vault.root.path().join("old.key");
    let new_key = vault.root.path().join("new.key");
    let with_key = |key: &std::path::Path, args: &[&str]| {
        let mut command = vault.command(&[&["--key-file", key.to_str().unwrap()], args].concat());
        command.env_remove("VAULT_MASTER_KEY");
        vault.run_command(command, None)
    };
    with_key(&old_key, &["init"]).ok();
    let secret = crate::support::client_secret_file(&vault);
    let mut add = vault.command(&[
        "--key-file",
        old_key.to_str().unwrap(),
        "add-account",
        "acct",
        "--issuer",
        &fake.base,
        "--client-id",
        crate::support::fake_oauth::CLIENT_ID,
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

/// `vault VERB FILE --passphrase-file PASSPHRASE` (export, import).
pub(crate) fn with_passphrase(
    vault: &TestVault,
    verb: &str,
    file: &Path,
    passphrase: &Path,
) -> Run {
    vault.run(&[
        verb,
        file.to_str().unwrap(),
        "--passphrase-file",
        passphrase.to_str().unwrap(),
    ])
}

#[test]
fn export_and_import_round_trip_and_refuse_bad_archives() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let source = TestVault::new(Some(&fake));
    add_with_browser(&source, &fake, "mail").ok();
    source
        .run(&["schedule", "mail", "--refresh-before", "120"])
        .ok();
    let passphrase = source.root.path().join("passphrase");
    crate::support::write_private(&passphrase, "correct horse battery staple\n");
    let archive = source.root.path().join("backup.tvx");
    with_passphrase(&source, "export", &archive, &passphrase).ok();
    with_passphrase(&source, "export", &archive, &passphrase).fails_with(1, "must not exist");
    let bytes = std::fs::read(&archive).unwrap();
    for secret in source.all_planted() {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "plaintext in the archive"
        );
    }

    // Into a new vault: the account works there, refreshes included.
    let target = TestVault::new(Some(&fake));
    let run = with_passphrase(&target, "import", &archive, &passphrase);
    run.ok();
    assert!(
        run.stdout.contains("Imported 1 account(s): mail"),
        "{}",
        run.stdout
    );
    crate::support::token(
        &target,
        &fake,
        &["mail", "--no-daemon", "--min-valid", "7200"],
    );
    assert!(
        target
            .run(&["status", "mail"])
            .stdout
            .contains("120 s before expiry")
    );
    target.assert_no_plaintext_on_disk();

    // The same names again: nothing imported.
    with_passphrase(&target, "import", &archive, &passphrase)
        .fails_with(1, "already has account(s) mail");

    let other = TestVault::new(Some(&fake));
    let wrong = other.root.path().join("wrong");
    crate::support::write_private(&wrong, "not the right passphrase\n");
    with_passphrase(&other, "import", &archive, &wrong).fails_with(1, "wrong passphrase");
    let truncated = other.root.path().join("truncated.tvx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    with_passphrase(&other, "import", &truncated, &passphrase).fails_with(1, "damaged");
    let mut tampered = bytes.clone();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered_file = other.root.path().join("tampered.tvx");
    std::fs::write(&tampered_file, &tampered).unwrap();
    with_passphrase(&other, "import", &tampered_file, &passphrase).fails_with(1, "altered");
    let short = other.root.path().join("short");
    crate::support::write_private(&short, "short\n");
    with_passphrase(
        &other,
        "export",
        Path::new("/tmp/never-written.tvx"),
        &short,
    )
    .fails_with(1, "12 characters");
    assert!(
        other.run(&["list"]).stdout.contains("No accounts"),
        "nothing was half-imported"
    );
}
