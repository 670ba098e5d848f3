//! A master key derived from a passphrase (Argon2id), for machines without a keyring: typed at a
//! real terminal, read from a private file, or handed to `vault serve` as a systemd credential;
//! `vault rekey` moves a vault to and from it.

use std::process::Stdio;

use crate::support::daemon::Daemon;
use crate::support::fake_oauth::{self, OfflineRule};
use crate::support::{TestVault, add_with_browser, write_private};

const PASSPHRASE: &str = "correct horse battery staple";

/// `vault ARGS` on a pseudo-terminal (util-linux `script`), with `typed` lines as keystrokes:
/// the passphrase prompt reads the terminal, never stdin.
fn on_terminal(vault: &TestVault, args: &[&str], typed: &[&str]) -> (i32, String) {
    let line = std::iter::once(env!("CARGO_BIN_EXE_vault"))
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = vault.program("script");
    command
        .args(["-qec", &line, "/dev/null"])
        .env_remove("VAULT_MASTER_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("script (util-linux) runs");
    let mut keys = child.stdin.take().unwrap();
    for line in typed {
        // Each answer after its prompt is up: a pty drops input typed while echo is still on.
        std::thread::sleep(std::time::Duration::from_millis(700));
        std::io::Write::write_all(&mut keys, format!("{line}\n").as_bytes()).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(keys);
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        !text.contains(PASSPHRASE),
        "the typed passphrase was echoed:\n{text}"
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn init_asks_twice_on_a_terminal_and_every_command_then_needs_the_passphrase() {
    let vault = TestVault::uninitialized(None);
    let (code, text) = on_terminal(&vault, &["init", "--passphrase"], &[PASSPHRASE, "typo"]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("differ"), "{text}");
    assert!(!vault.db_path().exists(), "a failed init leaves no vault");
    let (code, text) = on_terminal(&vault, &["init", "--passphrase"], &["short", "short"]);
    assert!(code != 0 && text.contains("shorter than 12"), "{text}");
    let (code, text) = on_terminal(&vault, &["init", "--passphrase"], &[PASSPHRASE, PASSPHRASE]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("Again:") && text.contains("a passphrase (Argon2id)"),
        "{text}"
    );

    let (code, text) = on_terminal(&vault, &["list"], &[PASSPHRASE]);
    assert!(code == 0 && text.contains("No accounts yet"), "{text}");
    let (code, text) = on_terminal(&vault, &["list"], &["correct horse battery stapler"]);
    assert!(
        code == 6 && text.contains("does not open this vault"),
        "{text}"
    );
    // No terminal, no file: the error says how to give it.
    let mut command = vault.command(&["list"]);
    command.env_remove("VAULT_MASTER_KEY");
    vault
        .run_command(command, None)
        .fails_with(6, "--key-passphrase-file PATH");
    // `--passphrase` with another key source is a contradiction, not a guess.
    TestVault::uninitialized(None)
        .run(&["init", "--passphrase"])
        .fails_with(1, "choose one");
}

#[test]
fn the_daemon_reads_the_passphrase_once_from_its_systemd_credential() {
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::with_passphrase(Some(&fake), PASSPHRASE);
    add_with_browser(&vault, &fake, "mail").ok();
    vault.assert_no_plaintext_on_disk();

    let credentials = vault.root.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let credential = credentials.join("tokenvault-passphrase");
    write_private(&credential, PASSPHRASE);
    let mut serve = vault.command(&["serve"]);
    serve
        .env_remove("VAULT_KEY_PASSPHRASE_FILE")
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let daemon = Daemon::spawn(serve, &vault);
    // The credential may go once the daemon runs: it read the passphrase at start only.
    std::fs::remove_file(&credential).unwrap();
    let mut token = vault.command(&["token", "mail"]);
    token.env_remove("VAULT_KEY_PASSPHRASE_FILE");
    let run = vault.run_command(token, None);
    run.ok();
    assert!(fake.is_access_token(run.stdout.trim()), "{}", run.stdout);
    let (status, _) = daemon.stop();
    assert!(status.success());
}

#[test]
fn rekey_moves_a_vault_to_a_key_file_and_back_to_a_new_passphrase() {
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::with_passphrase(Some(&fake), PASSPHRASE);
    add_with_browser(&vault, &fake, "mail").ok();
    let key_file = vault.root.path().join("new.key");
    let run = vault.run(&["rekey", "--new-key-file", key_file.to_str().unwrap()]);
    run.ok();
    assert!(
        run.stdout.contains("old passphrase no longer opens"),
        "{}",
        run.stdout
    );
    let with_key = |args: &[&str]| {
        let mut command = vault.command(args);
        command.env_remove("VAULT_KEY_PASSPHRASE_FILE");
        vault.run_command(command, None)
    };
    with_key(&["token", "mail", "--no-daemon"]).ok();

    let new_passphrase = vault.root.path().join("new-passphrase");
    write_private(&new_passphrase, "a new and longer passphrase\n");
    with_key(&[
        "rekey",
        "--passphrase",
        "--new-passphrase-file",
        new_passphrase.to_str().unwrap(),
    ])
    .ok();
    // The old passphrase (still in VAULT_KEY_PASSPHRASE_FILE) no longer opens it; the new does.
    vault
        .run(&["token", "mail", "--no-daemon"])
        .fails_with(6, "does not open this vault");
    vault
        .run(&[
            "--key-passphrase-file",
            new_passphrase.to_str().unwrap(),
            "token",
            "mail",
            "--no-daemon",
        ])
        .ok();
}

#[test]
fn a_passphrase_file_others_could_read_or_replace_and_edited_costs_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let vault = TestVault::with_passphrase(None, PASSPHRASE);
    let file = vault.root.path().join("passphrase");
    vault.run(&["list"]).ok();

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    vault.run(&["list"]).fails_with(6, "chmod 600");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
    vault
        .run(&["list"])
        .fails_with(6, "belongs to another user");
    // A symlink planted at the file's place is not followed, even to the right passphrase.
    let real = vault.root.path().join("real-passphrase");
    write_private(&real, PASSPHRASE);
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&real, &file).unwrap();
    vault.run(&["list"]).fails_with(6, "cannot read");
    std::fs::remove_file(&file).unwrap();
    write_private(&file, PASSPHRASE);
    vault.run(&["list"]).ok();

    // Costs edited into the database fail at once with a clear error, not after gigabytes.
    let db = rusqlite::Connection::open(vault.db_path()).unwrap();
    let record: String = db
        .query_row(
            "SELECT value FROM meta WHERE key = 'key_source'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let edited = record.replace("m=65536", "m=4294967295");
    assert_ne!(edited, record);
    db.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'key_source'",
        [&edited],
    )
    .unwrap();
    vault
        .run(&["list"])
        .fails_with(6, "beyond the accepted costs");
}
