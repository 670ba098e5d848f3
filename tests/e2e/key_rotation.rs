//! Rotating an account's own long-lived key through its provider's API (`vault rotate`): a
//! Google service-account key through IAM, a Microsoft client secret through Graph — against
//! local servers in the documented request and answer shapes, acting on the OAuth provider's
//! credentials, so a key that did not really change fails the token requests after it.

use std::time::Duration;

use tokenvault::account::SecretKind;

use crate::support::daemon::Daemon;
use crate::support::fake_keys::{self, FakeKeys, Op};
use crate::support::fake_oauth::{self, CLIENT_ID, CLIENT_SECRET, FakeOAuth, OfflineRule};
use crate::support::{
    TestVault, alert_lines, alerting_config, client_secret_file, eventually,
    service_account_key_file, token,
};

const SCOPE: &str = "https://www.googleapis.com/auth/drive.readonly";

/// A vault with service account `robot`, whose keys `iam` manages.
fn robot(fake: &FakeOAuth, iam: &FakeKeys) -> TestVault {
    let vault = TestVault::new(Some(fake));
    let key = service_account_key_file(&vault, fake);
    vault
        .run(&[
            "add-account",
            "robot",
            "--service-account",
            key.to_str().unwrap(),
            "--scope",
            SCOPE,
            "--key-api-url",
            &iam.base,
        ])
        .ok();
    vault
}

/// The `private_key_id` of the key file stored for `robot`.
fn stored_key_id(vault: &TestVault) -> String {
    let file: serde_json::Value =
        serde_json::from_str(&vault.stored_secret("robot", SecretKind::ServiceAccountKey)).unwrap();
    file["private_key_id"].as_str().unwrap().to_owned()
}

/// A new token from the provider (not the cache), signed with the stored key.
fn fresh_token(vault: &TestVault, fake: &FakeOAuth, name: &str) {
    token(vault, fake, &[name, "--min-valid", "7200"]);
}

#[test]
fn a_service_account_key_rotates_and_the_old_one_is_deleted() {
    let fake = fake_oauth::start(OfflineRule::Google);
    let iam = fake_keys::start_iam(&fake);
    let vault = robot(&fake, &iam);
    let old = stored_key_id(&vault);

    let run = vault.run(&["rotate", "robot"]);
    run.ok();
    let new = stored_key_id(&vault);
    assert_ne!(new, old);
    assert_eq!(
        iam.key_ids(),
        std::slice::from_ref(&new),
        "exactly the stored key is left at Google"
    );
    assert!(
        run.stdout.contains(&new) && run.stdout.contains(&old),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("PRIVATE KEY"));
    assert_eq!(iam.calls(), [Op::List, Op::Create, Op::Delete]);
    // The provider no longer accepts the old key; the stored one works.
    fresh_token(&vault, &fake, "robot");

    // Again: the key the first rotation made is the one replaced.
    vault.run(&["rotate", "robot"]).ok();
    assert_eq!(iam.key_ids(), [stored_key_id(&vault)]);
    assert_ne!(stored_key_id(&vault), new);
    fresh_token(&vault, &fake, "robot");
    vault.assert_no_plaintext_on_disk();
}

#[test]
fn without_permission_the_error_names_the_role_and_nothing_changes() {
    let fake = fake_oauth::start(OfflineRule::Google);
    let iam = fake_keys::start_iam(&fake);
    let vault = robot(&fake, &iam);
    let old = stored_key_id(&vault);
    iam.deny(true);
    vault
        .run(&["rotate", "robot"])
        .fails_with(4, "roles/iam.serviceAccountKeyAdmin");
    assert_eq!(stored_key_id(&vault), old);
    assert_eq!(iam.key_ids(), [old]);
    fresh_token(&vault, &fake, "robot");
}

/// `vault rotate NAME` left waiting for the answer to `op` (carried out at the provider), then
/// killed.
fn killed_waiting_for(vault: &TestVault, keys: &FakeKeys, name: &str, op: Op) {
    keys.hang_on(Some(op));
    let before = keys.calls().len();
    let mut child = vault.command(&["rotate", name]).spawn().unwrap();
    let reached = eventually(Duration::from_secs(30), || {
        keys.calls()[before..].contains(&op)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(reached, "the rotation never reached {op:?}");
    keys.hang_on(None);
}

#[test]
fn sigkill_at_each_step_leaves_one_working_key_and_the_next_run_cleans_up() {
    let fake = fake_oauth::start(OfflineRule::Google);
    let iam = fake_keys::start_iam(&fake);
    let vault = robot(&fake, &iam);
    for op in [Op::List, Op::Create, Op::Delete] {
        let before = stored_key_id(&vault);
        killed_waiting_for(&vault, &iam, "robot", op);
        // A working key is stored whatever the step: the old one until the new one is
        // committed (Delete comes after the commit), and at most one extra key at Google.
        let stored = stored_key_id(&vault);
        assert_eq!(stored != before, op == Op::Delete, "{op:?}");
        assert!(iam.key_ids().contains(&stored), "{op:?}");
        assert!(iam.key_ids().len() <= 2, "{op:?}: {:?}", iam.key_ids());
        fresh_token(&vault, &fake, "robot");

        let run = vault.run(&["rotate", "robot"]);
        run.ok();
        let expected = match op {
            Op::List => "Rotated the key",
            Op::Create => "an interrupted rotation of robot had created and never used",
            Op::Delete => "Finished the rotation of robot that was interrupted",
        };
        assert!(run.stdout.contains(expected), "{op:?}: {}", run.stdout);
        assert_eq!(iam.key_ids(), [stored_key_id(&vault)], "{op:?}");
        fresh_token(&vault, &fake, "robot");
    }
}

/// A vault with account `mail`: client credentials of a Microsoft app whose secrets `graph`
/// manages.
fn mail(fake: &FakeOAuth, graph: &FakeKeys, tenant: &str) -> (TestVault, crate::support::Run) {
    let vault = TestVault::new(Some(fake));
    let secret = client_secret_file(&vault);
    let run = vault.run(&[
        "add-account",
        "mail",
        "--provider",
        "microsoft",
        "--tenant",
        tenant,
        "--token-url",
        &fake.token_url(),
        "--client-id",
        CLIENT_ID,
        "--client-secret-file",
        secret.to_str().unwrap(),
        "--client-credentials",
        "--scope",
        "https://graph.microsoft.com/.default",
        "--key-api-url",
        &graph.base,
    ]);
    (vault, run)
}

#[test]
fn a_microsoft_client_secret_rotates_through_graph() {
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let graph = fake_keys::start_graph(&fake);
    let (vault, added) = mail(&fake, &graph, "contoso.onmicrosoft.com");
    added.ok();
    let run = vault.run(&["rotate", "mail"]);
    run.ok();
    let stored = vault.stored_secret("mail", SecretKind::ClientSecret);
    assert_ne!(stored, CLIENT_SECRET);
    // The secret set by hand was told apart by its first characters and removed; the provider
    // accepts only the new one.
    assert_eq!(graph.secrets(), std::slice::from_ref(&stored));
    assert!(!run.stdout.contains(&stored), "{}", run.stdout);
    fresh_token(&vault, &fake, "mail");
    let status = vault.run(&["status", "mail"]);
    assert!(
        !status.stdout.contains("previous client secret"),
        "the rotation is over: {}",
        status.stdout
    );

    // Killed waiting for removePassword: the new secret is in use, the next run removes the old.
    killed_waiting_for(&vault, &graph, "mail", Op::Delete);
    fresh_token(&vault, &fake, "mail");
    vault.run(&["rotate", "mail"]).ok();
    assert_eq!(
        graph.secrets(),
        [vault.stored_secret("mail", SecretKind::ClientSecret)]
    );
    // Killed waiting for addPassword: the next run removes the secret it never stored.
    killed_waiting_for(&vault, &graph, "mail", Op::Create);
    assert_eq!(graph.secrets().len(), 2);
    vault.run(&["rotate", "mail"]).ok();
    assert_eq!(
        graph.secrets(),
        [vault.stored_secret("mail", SecretKind::ClientSecret)]
    );
    fresh_token(&vault, &fake, "mail");
}

#[test]
fn without_permission_graph_refusal_names_it_and_nothing_changes() {
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let graph = fake_keys::start_graph(&fake);
    let (vault, added) = mail(&fake, &graph, "contoso.onmicrosoft.com");
    added.ok();
    graph.deny(true);
    vault
        .run(&["rotate", "mail"])
        .fails_with(4, "Application.ReadWrite.OwnedBy");
    assert_eq!(graph.secrets(), [CLIENT_SECRET]);
    fresh_token(&vault, &fake, "mail");
}

/// Makes the key of account `name` `days` old, as time would.
fn age_key(vault: &TestVault, name: &str, days: i64) {
    let created = chrono::Utc::now().timestamp() - days * 86_400;
    rusqlite::Connection::open(vault.db_path())
        .unwrap()
        .execute(
            "UPDATE accounts SET key_created_at = ?1 WHERE name = ?2",
            rusqlite::params![created, name],
        )
        .unwrap();
}

#[test]
fn the_daemon_rotates_a_key_when_it_reaches_its_age() {
    let fake = fake_oauth::start(OfflineRule::Google);
    let iam = fake_keys::start_iam(&fake);
    let vault = robot(&fake, &iam);
    let old = stored_key_id(&vault);
    vault
        .run(&["schedule", "robot", "--rotate-every", "90d"])
        .ok();
    let status = vault.run(&["status", "robot"]);
    assert!(status.stdout.contains("every 90d"), "{}", status.stdout);
    // Not yet due: the daemon leaves it.
    let daemon = Daemon::start(&vault, &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stored_key_id(&vault), old);
    drop(daemon);

    age_key(&vault, "robot", 91);
    let daemon = Daemon::start(&vault, &[]);
    assert!(
        eventually(Duration::from_secs(30), || stored_key_id(&vault) != old
            && iam.key_ids() == [stored_key_id(&vault)]),
        "{:?}",
        iam.key_ids()
    );
    let new = stored_key_id(&vault);
    let (_, log) = daemon.stop();
    assert!(log.contains("rotated the account's key"), "{log}");
    assert!(!log.contains("PRIVATE"));
    // An audit line with key ids only (written by the time the daemon stopped).
    let audit = std::fs::read_to_string(vault.dir.join("audit.log")).unwrap();
    let line = audit
        .lines()
        .find(|line| line.contains("\"key_rotated\""))
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(line.contains(&new) && line.contains(&old), "{line}");
    assert!(!audit.contains("PRIVATE"));
    fresh_token(&vault, &fake, "robot");
    let status = vault.run(&["status", "robot"]);
    assert!(status.stdout.contains("key created"), "{}", status.stdout);
}

#[test]
fn a_key_the_provider_will_not_let_rotate_is_alerted_aging_once() {
    let fake = fake_oauth::start(OfflineRule::Google);
    let iam = fake_keys::start_iam(&fake);
    let vault = robot(&fake, &iam);
    let alerts = alerting_config(&vault, &fake, "");
    let old = stored_key_id(&vault);
    vault
        .run(&["schedule", "robot", "--rotate-every", "30d"])
        .ok();
    age_key(&vault, "robot", 45);
    iam.deny(true);
    let aging = |lines: &[String]| {
        lines
            .iter()
            .filter(|line| line.starts_with("robot|aging|"))
            .count()
    };
    let daemon = Daemon::start(&vault, &[]);
    assert!(
        eventually(Duration::from_secs(30), || aging(&alert_lines(&alerts))
            == 1),
        "{:?}",
        alert_lines(&alerts)
    );
    let lines = alert_lines(&alerts);
    assert!(
        lines
            .iter()
            .any(|line| line.contains("roles/iam.serviceAccountKeyAdmin")),
        "{lines:?}"
    );
    drop(daemon);
    // Once per due date, across restarts; the key in use is kept and works.
    let daemon = Daemon::start(&vault, &[]);
    std::thread::sleep(Duration::from_secs(3));
    drop(daemon);
    assert_eq!(
        aging(&alert_lines(&alerts)),
        1,
        "{:?}",
        alert_lines(&alerts)
    );
    assert_eq!(stored_key_id(&vault), old);
    fresh_token(&vault, &fake, "robot");
}

/// A Google key file for another service account, as a hostile or confused API could answer.
fn foreign_key_answer(fake: &FakeOAuth, id: &str) -> serde_json::Value {
    let pem = include_str!("../fixtures/spare-rsa-keys.pem")
        .split_inclusive("-----END PRIVATE KEY-----\n")
        .next()
        .unwrap();
    let file = serde_json::json!({
        "type": "service_account",
        "private_key_id": id,
        "private_key": pem,
        "client_email": "intruder@elsewhere.iam.gserviceaccount.com",
        "token_uri": fake.token_url(),
    });
    use base64::Engine;
    serde_json::json!({
        "name": format!("projects/p/serviceAccounts/x/keys/{id}"),
        "privateKeyData": base64::engine::general_purpose::STANDARD.encode(file.to_string()),
    })
}

#[test]
fn a_created_key_that_is_not_this_service_accounts_is_refused() {
    let fake = fake_oauth::start(OfflineRule::Google);
    let iam = fake_keys::start_iam(&fake);
    let vault = robot(&fake, &iam);
    let old = stored_key_id(&vault);
    for (answer, said) in [
        (
            foreign_key_answer(&fake, "abcdef0123"),
            "not the key of this service account",
        ),
        (
            serde_json::json!({ "name": "keys/a%2f..", "privateKeyData": "" }),
            "not an id it documents",
        ),
        (
            serde_json::json!({ "name": "keys/abc", "privateKeyData": "%%%" }),
            "not base64",
        ),
        (
            serde_json::json!({ "unexpected": 1 }),
            "not what the API documents",
        ),
    ] {
        iam.forge_create(answer);
        let run = vault.run(&["rotate", "robot"]);
        run.fails_with(5, said);
        assert!(!run.stderr.contains("PRIVATE"), "{}", run.stderr);
        assert_eq!(stored_key_id(&vault), old);
        fresh_token(&vault, &fake, "robot");
    }
}

/// One rotation of an account at a time: a second one (the daemon's duty and `vault rotate`, or
/// two commands) fails at once and touches nothing at the provider.
#[test]
fn a_second_rotation_of_one_account_fails_and_changes_nothing() {
    use tokenvault::store::{AccountLock, Purpose};
    let fake = fake_oauth::start(OfflineRule::Google);
    let iam = fake_keys::start_iam(&fake);
    let vault = robot(&fake, &iam);
    let old = stored_key_id(&vault);
    let held = AccountLock::acquire_for(&vault.dir, "robot", Purpose::KeyRotation).unwrap();
    vault.run(&["rotate", "robot"]).fails_with(
        1,
        "another rotation of account \"robot\"'s key is under way",
    );
    assert!(iam.calls().is_empty());
    assert_eq!(stored_key_id(&vault), old);
    drop(held);
    vault.run(&["rotate", "robot"]).ok();
    assert_ne!(stored_key_id(&vault), old);
}
