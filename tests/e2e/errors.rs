//! Bad input of every kind: a clear error, a non-zero exit, nothing half-written.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use crate::support::Scenario;
use crate::support::fake_oauth::{CLIENT_ID, Fault, OfflineRule};
use crate::support::{TestVault, random_key, write_private};
use crate::support::{add_with_browser, browser_add_args};

fn assert_no_accounts(vault: &TestVault) {
    let list = vault.run(&["list"]);
    list.ok();
    assert!(list.stdout.contains("No accounts"), "{}", list.stdout);
}

#[test]
fn wrong_master_key_is_refused() {
    let Scenario { fake: _fake, vault } = Scenario::new().account("a");
    let mut command = vault.command(&["token", "a"]);
    command.env("VAULT_MASTER_KEY", random_key());
    vault
        .run_command(command, None)
        .fails_with(6, "does not open this vault");
    let mut command = vault.command(&["list"]);
    command.env("VAULT_MASTER_KEY", "not base64!");
    vault
        .run_command(command, None)
        .fails_with(6, "VAULT_MASTER_KEY is not the base64 of 32 bytes");
}

#[test]
fn key_file_problems() {
    let vault = TestVault::uninitialized(None);
    let key_file = vault.root.path().join("keys/master.key");
    let key_arg = key_file.to_str().unwrap();
    let init = |args: &[&str]| {
        let mut command = vault.command(args);
        command.env_remove("VAULT_MASTER_KEY");
        vault.run_command(command, None)
    };
    init(&["--key-file", key_arg, "init"]).ok();
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    init(&["--key-file", key_arg, "list"]).ok();
    // The vault remembers its key file: no flag needed.
    init(&["list"]).ok();

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    init(&["list"]).fails_with(6, "chmod 600");

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let missing = vault.root.path().join("nope.key");
    init(&["--key-file", missing.to_str().unwrap(), "list"]).fails_with(6, "does not exist");

    let other = vault.root.path().join("other.key");
    write_private(&other, &format!("{}\n", random_key()));
    init(&["--key-file", other.to_str().unwrap(), "list"])
        .fails_with(6, "does not open this vault");

    write_private(&other, "garbage\n");
    init(&["--key-file", other.to_str().unwrap(), "list"])
        .fails_with(6, "not a tokenvault master key");
}

#[test]
fn init_without_a_keyring_falls_back_to_a_key_file_and_says_so() {
    let vault = TestVault::uninitialized(None);
    let mut command = vault.command(&["init"]);
    command.env_remove("VAULT_MASTER_KEY");
    let run = vault.run_command(command, None);
    run.ok();
    assert!(
        run.stderr.contains("No OS keyring is available"),
        "{}",
        run.stderr
    );
    let key_file = vault.root.path().join("home/.config/tokenvault/master.key");
    assert!(key_file.exists(), "{}", run.stderr);
    let mut command = vault.command(&["list"]);
    command.env_remove("VAULT_MASTER_KEY");
    vault.run_command(command, None).ok();
    vault.run(&["init"]).fails_with(1, "already exists");
}

#[test]
fn missing_vault_and_corrupt_database() {
    let vault = TestVault::uninitialized(None);
    vault.run(&["list"]).fails_with(1, "vault init");
    std::fs::create_dir_all(&vault.dir).unwrap();
    let garbage = b"this is not a database, and must stay exactly as it is".repeat(100);
    std::fs::write(vault.db_path(), &garbage).unwrap();
    vault
        .run(&["list"])
        .fails_with(1, "damaged or is not a tokenvault database");
    vault.run(&["init"]).fails_with(1, "already exists");
    assert_eq!(
        std::fs::read(vault.db_path()).unwrap(),
        garbage,
        "the file was not touched"
    );

    std::fs::remove_file(vault.db_path()).unwrap();
    rusqlite::Connection::open(vault.db_path())
        .unwrap()
        .execute_batch("CREATE TABLE other (x)")
        .unwrap();
    vault
        .run(&["list"])
        .fails_with(1, "not a tokenvault database");
}

#[test]
fn malformed_service_account_keys() {
    let fake = crate::support::fake_oauth::start(OfflineRule::Google);
    let vault = TestVault::new(Some(&fake));
    let path = vault.root.path().join("sa.json");
    let cases = [
        ("{ not json", "malformed JSON"),
        (
            r#"{"type":"authorized_user","client_email":"a","private_key":"b","token_uri":"http://127.0.0.1/t"}"#,
            "not \"service_account\"",
        ),
        (
            r#"{"type":"service_account","client_email":"a","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","token_uri":"http://127.0.0.1/t"}"#,
            "private_key",
        ),
        (r#"{"type":"service_account"}"#, "field is missing"),
    ];
    for (text, needle) in cases {
        std::fs::write(&path, text).unwrap();
        vault
            .run(&[
                "add-account",
                "sa",
                "--service-account",
                path.to_str().unwrap(),
                "--scope",
                "x",
            ])
            .fails_with(1, needle);
    }
    vault
        .run(&[
            "add-account",
            "sa",
            "--service-account",
            "/nonexistent/key.json",
            "--scope",
            "x",
        ])
        .fails_with(1, "cannot read the service-account key file");
    assert_no_accounts(&vault);
}

#[test]
fn bad_arguments() {
    let vault = TestVault::new(None);
    vault
        .run(&[
            "add-account",
            "x",
            "--provider",
            "yahoo",
            "--client-id",
            "c",
        ])
        .fails_with(2, "invalid value 'yahoo'");
    vault
        .run(&["add-account", "x", "--client-id", "c", "--public-client"])
        .fails_with(1, "name the provider");
    vault
        .run(&[
            "add-account",
            "../evil",
            "--provider",
            "google",
            "--client-id",
            "c",
            "--public-client",
        ])
        .fails_with(1, "not allowed");
    vault
        .run(&[
            "add-account",
            "x",
            "--token-url",
            "http://example.com/token",
            "--client-id",
            "c",
            "--public-client",
            "--client-credentials",
        ])
        .fails_with(1, "https");
    vault
        .run(&["token", "ghost"])
        .fails_with(1, "no account named \"ghost\"");
    vault
        .run(&["remove", "ghost"])
        .fails_with(1, "no account named \"ghost\"");
    assert_no_accounts(&vault);
}

#[test]
fn forged_state_denied_consent_and_busy_port() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    // A redirect with another state is ignored (any local process can send one): the login
    // goes on waiting for its own, here until its timeout.
    fake.configure(|b| b.forge_state = true);
    let args = browser_add_args(&vault, &fake, "a", &["--timeout", "3"]);
    vault
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .fails_with(1, "no redirect came back");
    fake.configure(|b| b.forge_state = false);
    // A local process racing the browser with a forged redirect does not end the login.
    let racer = vault.root.path().join("racing-browser.sh");
    std::fs::write(
        &racer,
        "#!/bin/sh
redirect=$(printf '%s' \"$1\" | sed -n 's/.*redirect_uri=\\([^&]*\\).*/\\1/p' | sed 's/%3A/:/g; s/%2F/\\//g')
curl -s -o /dev/null \"${redirect}?code=forged&state=forged\"
exec curl -s -o /dev/null -L --max-time 20 \"$1\"
",
    )
    .unwrap();
    std::fs::set_permissions(&racer, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = browser_add_args(&vault, &fake, "raced", &["--timeout", "30"]);
    let mut command = vault.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    command.env("BROWSER", &racer);
    vault.run_command(command, None).ok();
    vault.run(&["remove", "raced"]).ok();
    fake.configure(|b| b.deny_consent = true);
    add_with_browser(&vault, &fake, "a").fails_with(1, "denied");
    fake.configure(|b| b.deny_consent = false);

    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let args = browser_add_args(&vault, &fake, "a", &["--redirect-port", &port]);
    vault
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .fails_with(1, "Free the port");
    assert_no_accounts(&vault);
}

#[test]
fn no_redirect_times_out() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    let args = browser_add_args(&vault, &fake, "a", &["--timeout", "2"]);
    let mut command = vault.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    command.env("BROWSER", "true");
    vault
        .run_command(command, None)
        .fails_with(1, "no redirect came back within 2 s");
    assert_no_accounts(&vault);
}

#[test]
fn garbage_or_html_from_the_token_endpoint() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    for fault in [Fault::Html, Fault::Garbage] {
        fake.inject(fault);
        let run = add_with_browser(&vault, &fake, "a");
        run.fails_with(5, "not OAuth JSON");
    }
    fake.inject(Fault::Unavailable503);
    add_with_browser(&vault, &fake, "a").fails_with(5, "HTTP 503");
    assert_no_accounts(&vault);
    // Unreachable provider.
    vault
        .run(&[
            "add-account",
            "a",
            "--issuer",
            "http://127.0.0.1:9",
            "--client-id",
            CLIENT_ID,
            "--public-client",
        ])
        .fails_with(1, "cannot discover");
    assert_no_accounts(&vault);
}

#[test]
fn duplicate_account_names_are_refused_before_the_browser() {
    let Scenario { fake, vault } = Scenario::new().account("dup");
    let before = fake.counters(|c| c.token_requests);
    add_with_browser(&vault, &fake, "dup").fails_with(1, "already exists");
    assert_eq!(fake.counters(|c| c.token_requests), before);
    vault.run(&["remove", "dup"]).ok();
    assert_no_accounts(&vault);
}

#[test]
fn account_names_never_escape_the_vault_directory() {
    let vault = TestVault::new(None);
    vault
        .run(&["token", "../../escaped", "--no-daemon"])
        .fails_with(1, "no account named");
    vault
        .run(&["remove", "../escaped"])
        .fails_with(1, "no account named");
    assert!(!vault.root.path().join("escaped.lock").exists());
    assert!(!vault.dir.join("escaped.lock").exists());
}

#[test]
fn a_reader_that_leaves_early_ends_the_output_quietly() {
    let Scenario { fake: _fake, vault } = Scenario::new().account("mail");
    for verb in [&["status"][..], &["list"], &["status", "--json"]] {
        // `vault status | head -0`: the pipe's reader is gone before the first line.
        let mut child = vault
            .command(verb)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{verb:?}: {stderr}");
        assert_ne!(output.status.code(), Some(101), "{verb:?}");
    }
}

#[test]
fn doctor_lists_each_problem_with_its_fix() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    {
        let _daemon = crate::support::daemon::Daemon::start(&vault, &[]);
        let healthy = vault.run(&["doctor"]);
        healthy.ok();
        assert!(
            healthy.stdout.contains("serves this vault") && !healthy.stdout.contains("FIX"),
            "{}",
            healthy.stdout
        );
    }
    // Three things a person must fix: a readable audit log, a daemon of another vault on this
    // vault's socket, and a revoked grant.
    std::fs::set_permissions(
        vault.dir.join("audit.log"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let other = TestVault::new(None);
    let mut command = other.command(&["serve"]);
    command
        .env("VAULT_SOCKET", vault.socket())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut other_daemon = command.spawn().unwrap();
    assert!(crate::support::eventually(
        std::time::Duration::from_secs(20),
        || std::os::unix::net::UnixStream::connect(vault.socket()).is_ok()
    ));
    fake.revoke_all();
    vault
        .run(&["validate", "mail"])
        .fails_with(3, "invalid_grant");
    let sick = vault.run(&["doctor"]);
    let _ = other_daemon.kill();
    let _ = other_daemon.wait();
    sick.fails_with(1, "3 problem(s) found");
    for fix in ["chmod 600", "serves another vault", "vault login mail"] {
        assert!(sick.stdout.contains(fix), "{fix}:\n{}", sick.stdout);
    }
}

#[test]
fn doctor_compares_the_clock_with_the_provider_and_tries_the_alert_sinks_without_alerting() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    // The provider's clock is ten minutes behind ours; the webhook points at a closed port and
    // the alert command at a program that is not there.
    fake.configure(|b| b.clock_skew = Some(-600));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    write_private(
        &vault.dir.join("config.toml"),
        &format!(
            "[alert]\nwebhook = \"http://127.0.0.1:{closed_port}/hook/SECRET-TOPIC\"\ncommand = \"no-such-alerter-tv \\\"$VAULT_ACCOUNT\\\"\"\ndesktop = false\n"
        ),
    );
    let sick = vault.run(&["doctor"]);
    assert!(
        sick.stderr.contains("3 problem(s) found"),
        "{}",
        sick.stdout
    );
    for needle in [
        "s ahead of the clock of http://127.0.0.1",
        "timedatectl set-ntp true",
        &format!("webhook at http://127.0.0.1:{closed_port} cannot be reached"),
        "no-such-alerter-tv is not found",
    ] {
        assert!(sick.stdout.contains(needle), "{needle}:\n{}", sick.stdout);
    }
    assert!(
        !sick.stdout.contains("SECRET-TOPIC"),
        "a webhook URL's path is shown:\n{}",
        sick.stdout
    );

    // Lock files an earlier version left, one per account.
    std::fs::create_dir(vault.dir.join("locks")).unwrap();
    std::fs::write(vault.dir.join("locks/mail.lock"), "").unwrap();
    let old_locks = vault.run(&["doctor"]);
    assert!(old_locks.stdout.contains("rm -r "), "{}", old_locks.stdout);
    std::fs::remove_dir_all(vault.dir.join("locks")).unwrap();

    fake.configure(|b| b.clock_skew = Some(5));
    crate::support::alerting_config(&vault, &fake, "");
    let healthy = vault.run(&["doctor"]);
    healthy.ok();
    for needle in [
        "this clock agrees with",
        "the alert webhook at",
        "printf is installed",
    ] {
        assert!(
            healthy.stdout.contains(needle),
            "{needle}:\n{}",
            healthy.stdout
        );
    }
    assert!(fake.webhooks().is_empty(), "doctor sent an alert");

    // An edited database naming one of the user's files as a rekey's leftover key file does not
    // get doctor to suggest deleting it.
    let precious = vault.root.path().join("precious.txt");
    write_private(&precious, "the user's own notes\n");
    rusqlite::Connection::open(vault.db_path())
        .unwrap()
        .execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('rekey_pending', ?1)",
            [format!("file:{}", precious.display())],
        )
        .unwrap();
    let edited = vault.run(&["doctor"]);
    assert!(!edited.stdout.contains("precious"), "{}", edited.stdout);
}
