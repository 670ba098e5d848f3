//! Rotating long-lived credentials without downtime: a client secret changed at the provider
//! while the old one still works (`vault set-client-secret`), the previous secret carrying the
//! account while the new one is refused, and the alert ahead of a recorded expiry.

use std::time::Duration;

use tokenvault::account::SecretKind;

use crate::support::daemon::Daemon;
use crate::support::fake_oauth::{self, CLIENT_SECRET, FakeOAuth, OfflineRule};
use crate::support::{
    Run, TestVault, add_with_browser, alert_lines, alerting_config, eventually, write_private,
};

/// A vault with account `mail` whose client is the provider's confidential one.
fn vault_with_mail(fake: &FakeOAuth) -> TestVault {
    let mut vault = TestVault::new(Some(fake));
    vault
        .planted
        .extend(["cs-NEW-secret-1".into(), "cs-NEW-secret-2".into()]);
    add_with_browser(&vault, fake, "mail").ok();
    vault
}

/// The provider accepts exactly these client secrets (several at once, as Entra does).
fn provider_accepts(fake: &FakeOAuth, secrets: &[&str]) {
    let secrets = secrets.iter().map(|secret| secret.to_string()).collect();
    fake.configure(|b| b.client_secrets = secrets);
}

fn set_secret(vault: &TestVault, secret: &str, extra: &[&str]) -> Run {
    let file = vault.root.path().join("new-secret");
    write_private(&file, &format!("{secret}\n"));
    let mut args = vec!["set-client-secret", "mail", "--client-secret-file"];
    args.push(file.to_str().unwrap());
    args.extend(extra);
    vault.run(&args)
}

fn stored(vault: &TestVault, kind: SecretKind) -> Option<String> {
    let store = vault.open_store();
    let account = store.account("mail").unwrap();
    store
        .secret(&account, kind)
        .unwrap()
        .map(|secret| secret.expose().clone())
}

#[test]
fn a_client_secret_rotates_without_a_refused_request() {
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = vault_with_mail(&fake);
    // The expiry of the secret in use, recorded on its own.
    vault
        .run(&[
            "set-client-secret",
            "mail",
            "--current",
            "--expires",
            "2998-01-01",
        ])
        .ok();
    assert_eq!(
        stored(&vault, SecretKind::ClientSecret).unwrap(),
        CLIENT_SECRET
    );
    let details = vault.run(&["status", "mail"]);
    assert!(
        details.stdout.contains("secret expires   2998-01-01"),
        "{}",
        details.stdout
    );
    vault
        .run(&["set-client-secret", "mail", "--current"])
        .fails_with(2, "--expires");
    provider_accepts(&fake, &[CLIENT_SECRET, "cs-NEW-secret-1"]);
    let run = set_secret(&vault, "cs-NEW-secret-1", &["--expires", "2999-06-01"]);
    run.ok();
    assert!(run.stdout.contains("works"), "{}", run.stdout);
    assert_eq!(
        stored(&vault, SecretKind::ClientSecret).unwrap(),
        "cs-NEW-secret-1"
    );
    assert_eq!(
        stored(&vault, SecretKind::PreviousClientSecret).unwrap(),
        CLIENT_SECRET
    );
    let details = vault.run(&["status", "mail"]);
    assert!(
        details.stdout.contains("secret expires   2999-06-01"),
        "{}",
        details.stdout
    );
    assert!(
        details.stdout.contains("--retire-old"),
        "{}",
        details.stdout
    );
    let json = vault.run(&["status", "mail", "--json"]);
    assert!(
        json.stdout
            .contains("\"client_secret_expires_at\": 32485190400"),
        "{}",
        json.stdout
    );

    // The old secret is deleted at the provider: the newest alone carries the account.
    provider_accepts(&fake, &["cs-NEW-secret-1"]);
    let refused_before = fake.counters(|c| c.client_rejections);
    let run = vault.run(&["validate", "mail"]);
    run.ok();
    assert!(!run.stdout.contains("previous"), "{}", run.stdout);
    vault
        .run(&["set-client-secret", "mail", "--retire-old"])
        .ok();
    assert_eq!(stored(&vault, SecretKind::PreviousClientSecret), None);
    assert_eq!(
        fake.counters(|c| c.client_rejections),
        refused_before,
        "no request went out with a secret the provider had dropped"
    );
    let requests = fake.counters(|c| c.token_requests);
    vault
        .run(&["set-client-secret", "mail", "--retire-old"])
        .fails_with(1, "no previous client secret");
    assert_eq!(
        fake.counters(|c| c.token_requests),
        requests,
        "nothing to retire, nothing spent"
    );
    vault.assert_no_plaintext_on_disk();
}

#[test]
fn the_previous_secret_carries_the_account_while_the_new_one_is_refused() {
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = vault_with_mail(&fake);
    // A typo, or a secret not yet live at the provider: refused, and the account keeps working.
    set_secret(&vault, "cs-NEW-secret-1", &[]).fails_with(4, "refused the new client secret");
    assert_eq!(
        stored(&vault, SecretKind::ClientSecret).unwrap(),
        "cs-NEW-secret-1"
    );
    let run = vault.run(&["validate", "mail"]);
    run.ok();
    assert!(
        run.stdout.contains("with the previous client secret"),
        "{}",
        run.stdout
    );
    // The daemon falls back too, and says so in its log.
    let daemon = Daemon::start(&vault, &[]);
    let answer = daemon.get("/v1/token/mail?min_valid=86400");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (_, log) = daemon.stop();
    assert!(log.contains("the previous one was used"), "{log}");
    // Retiring the previous secret now would stop the account: refused, nothing retired.
    vault
        .run(&["set-client-secret", "mail", "--retire-old"])
        .fails_with(4, "refused the new client secret");
    assert_eq!(
        stored(&vault, SecretKind::PreviousClientSecret).unwrap(),
        CLIENT_SECRET
    );

    // The corrected secret replaces the refused one; the one known to work is still kept.
    provider_accepts(&fake, &[CLIENT_SECRET, "cs-NEW-secret-2"]);
    let run = set_secret(&vault, "cs-NEW-secret-2", &[]);
    run.ok();
    assert!(
        run.stdout
            .contains("replaces the newest secret set earlier"),
        "{}",
        run.stdout
    );
    assert_eq!(
        stored(&vault, SecretKind::PreviousClientSecret).unwrap(),
        CLIENT_SECRET
    );
    provider_accepts(&fake, &["cs-NEW-secret-2"]);
    vault
        .run(&["set-client-secret", "mail", "--retire-old"])
        .ok();
    let json = vault.run(&["status", "mail", "--json"]);
    assert!(
        json.stdout.contains("\"state\": \"active\""),
        "{}",
        json.stdout
    );

    // An unknown account is named as such, before any secret is read.
    vault
        .run(&["set-client-secret", "nosuch", "--retire-old"])
        .fails_with(1, "no account named");
}

#[test]
fn a_recorded_expiry_is_alerted_once_ahead_of_time() {
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = vault_with_mail(&fake);
    let alerts = alerting_config(&vault, &fake, "");
    provider_accepts(&fake, &[CLIENT_SECRET, "cs-NEW-secret-1"]);
    let in_three_days = chrono::Utc::now() + chrono::Duration::days(3);
    set_secret(
        &vault,
        "cs-NEW-secret-1",
        &["--expires", &in_three_days.to_rfc3339()],
    )
    .ok();
    let daemon = Daemon::start(&vault, &[]);
    let expiring = |lines: &[String]| {
        lines
            .iter()
            .filter(|line| line.starts_with("mail|client_secret_expiring|"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(20), || expiring(&alert_lines(&alerts))
            == 1),
        "{:?}",
        alert_lines(&alerts)
    );
    let lines = alert_lines(&alerts);
    assert!(
        lines[0].contains("vault set-client-secret mail"),
        "{lines:?}"
    );
    // Monitoring sees the countdown too.
    let metrics = daemon.get("/v1/metrics").body;
    let left: f64 = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("tokenvault_client_secret_expiry_seconds{account=\"mail\"} ")
        })
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!((2.9 * 86_400.0..=3.0 * 86_400.0).contains(&left), "{left}");
    drop(daemon);
    // Once per date, across restarts.
    let daemon = Daemon::start(&vault, &[]);
    std::thread::sleep(Duration::from_secs(2));
    drop(daemon);
    assert_eq!(
        expiring(&alert_lines(&alerts)),
        1,
        "{:?}",
        alert_lines(&alerts)
    );
}
