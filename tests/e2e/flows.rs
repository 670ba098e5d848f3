//! Every way to add an account, end to end through the binary.

use crate::support::Scenario;
use crate::support::TestVault;
use crate::support::fake_oauth::{CLIENT_ID, Fault, OfflineRule, PUBLIC_CLIENT_ID};
use crate::support::{add_with_browser, client_secret_file, token};

#[test]
fn browser_login_with_discovery_then_tokens_from_cache_and_refresh() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    let run = add_with_browser(&vault, &fake, "work");
    run.ok();
    assert!(run.stdout.contains("Added account work"), "{}", run.stdout);
    assert!(
        run.stderr.contains("/authorize?"),
        "the URL is shown: {}",
        run.stderr
    );

    let first = token(&vault, &fake, &["work"]);
    let again = token(&vault, &fake, &["work"]);
    assert_eq!(first, again, "a valid cached token is reused");
    assert_eq!(
        fake.counters(|c| c.refresh_grants),
        0,
        "no upstream call while the cache is valid"
    );

    let refreshed = token(&vault, &fake, &["work", "--min-valid", "7200"]);
    assert_ne!(refreshed, first);
    assert_eq!(fake.counters(|c| c.refresh_grants), 1);

    let json = vault.run(&["token", "work", "--json"]);
    json.ok();
    let answer: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    assert!(answer["expires_in"].as_i64().unwrap() > 3000);
    assert!(answer.get("refresh_token").is_none());

    let list = vault.run(&["list"]);
    list.ok();
    assert!(
        list.stdout.contains("work") && list.stdout.contains("active"),
        "{}",
        list.stdout
    );
    vault.assert_no_plaintext_on_disk();
}

#[test]
fn rotated_refresh_tokens_are_kept_and_the_grant_survives() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| b.rotate = true);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "rotating").ok();
    for _ in 0..4 {
        token(&vault, &fake, &["rotating", "--min-valid", "7200"]);
    }
    assert_eq!(fake.counters(|c| c.refresh_grants), 4);
    assert_eq!(
        fake.live_grants(),
        1,
        "a reused rotated token would have revoked the grant"
    );
    vault.assert_no_plaintext_on_disk();
}

#[test]
fn google_style_offline_access_and_public_client() {
    let fake = crate::support::fake_oauth::start(OfflineRule::Google);
    let vault = TestVault::new(Some(&fake));
    vault
        .run(&[
            "add-account",
            "gmail",
            "--provider",
            "google",
            "--auth-url",
            &fake.auth_url(),
            "--token-url",
            &fake.token_url(),
            "--client-id",
            PUBLIC_CLIENT_ID,
            "--public-client",
            "--scope",
            "https://mail.google.com/",
            "--timeout",
            "30",
        ])
        .ok();
    token(&vault, &fake, &["gmail", "--min-valid", "7200"]);
}

#[test]
fn a_code_exchange_without_refresh_token_is_refused_with_the_fix() {
    let fake = crate::support::fake_oauth::start(OfflineRule::Google);
    let vault = TestVault::new(Some(&fake));
    // Explicit URLs add no offline parameters, so this Google-like server issues no refresh token.
    let run = vault.run(&[
        "add-account",
        "nooffline",
        "--auth-url",
        &fake.auth_url(),
        "--token-url",
        &fake.token_url(),
        "--client-id",
        PUBLIC_CLIENT_ID,
        "--public-client",
        "--timeout",
        "30",
    ]);
    run.fails_with(1, "without a refresh token");
    assert!(run.stderr.contains("offline"), "{}", run.stderr);
    assert!(vault.run(&["list"]).stdout.contains("No accounts"));
}

#[test]
fn device_flow() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    let secret = client_secret_file(&vault);
    let run = vault.run(&[
        "add-account",
        "tv",
        "--issuer",
        &fake.base,
        "--device",
        "--client-id",
        CLIENT_ID,
        "--client-secret-file",
        secret.to_str().unwrap(),
    ]);
    run.ok();
    assert!(
        run.stderr.contains("WDJB-MJHT") && run.stderr.contains("/activate"),
        "{}",
        run.stderr
    );
    token(&vault, &fake, &["tv", "--min-valid", "7200"]);
}

#[test]
fn device_flow_honours_slow_down() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| b.device_slow_down_first = true);
    let vault = TestVault::new(Some(&fake));
    let run = vault.run(&[
        "add-account",
        "slow",
        "--token-url",
        &fake.token_url(),
        "--device-url",
        &fake.device_url(),
        "--device",
        "--client-id",
        PUBLIC_CLIENT_ID,
        "--public-client",
    ]);
    run.ok();
    let (slow_downs, gaps) = fake.counters(|c| (c.slow_downs, c.device_poll_gaps.clone()));
    assert_eq!(slow_downs, 1);
    assert!(
        gaps[0].as_secs_f64() >= 5.5,
        "the interval grew by 5 s after slow_down: {gaps:?}"
    );
}

#[test]
fn service_account_jwt_bearer() {
    let fake = crate::support::fake_oauth::start(OfflineRule::Google);
    let vault = TestVault::new(Some(&fake));
    let key_path = crate::support::service_account_key_file(&vault, &fake);
    let run = vault.run(&[
        "add-account",
        "robot",
        "--service-account",
        key_path.to_str().unwrap(),
        "--scope",
        "https://www.googleapis.com/auth/drive.readonly",
        "--subject",
        "admin@example.com",
    ]);
    run.ok();
    token(&vault, &fake, &["robot", "--min-valid", "7200"]);
    let status = vault.run(&["status", "robot"]);
    status.ok();
    assert!(
        status
            .stdout
            .contains("robot@tokenvault-tests.iam.gserviceaccount.com"),
        "{}",
        status.stdout
    );
    vault.assert_no_plaintext_on_disk();
}

#[test]
fn client_credentials_with_post_auth() {
    let fake = crate::support::fake_oauth::start(OfflineRule::Google);
    let vault = TestVault::new(Some(&fake));
    let secret = client_secret_file(&vault);
    vault
        .run(&[
            "add-account",
            "machine",
            "--client-credentials",
            "--token-url",
            &fake.token_url(),
            "--client-id",
            CLIENT_ID,
            "--client-secret-file",
            secret.to_str().unwrap(),
            "--client-auth",
            "post",
            "--scope",
            "api",
        ])
        .ok();
    token(&vault, &fake, &["machine", "--min-valid", "7200"]);
    vault.assert_no_plaintext_on_disk();
}

#[test]
fn imported_refresh_token_is_proven_first() {
    let fake = crate::support::fake_oauth::start(OfflineRule::Google);
    let vault = TestVault::new(Some(&fake));
    let refresh = fake.issue_refresh_token("email");
    vault
        .run_with_stdin(
            &[
                "add-account",
                "migrated",
                "--token-url",
                &fake.token_url(),
                "--client-id",
                PUBLIC_CLIENT_ID,
                "--public-client",
                "--refresh-token-stdin",
            ],
            &format!("{refresh}\n"),
        )
        .ok();
    assert_eq!(
        fake.counters(|c| c.refresh_grants),
        1,
        "proven with one refresh"
    );

    let dead = vault.run_with_stdin(
        &[
            "add-account",
            "bogus",
            "--token-url",
            &fake.token_url(),
            "--client-id",
            PUBLIC_CLIENT_ID,
            "--public-client",
            "--refresh-token-stdin",
        ],
        "rt-not-a-real-token\n",
    );
    dead.fails_with(1, "invalid_grant");
    assert!(!vault.run(&["list"]).stdout.contains("bogus"));
    vault.assert_no_plaintext_on_disk();
}

#[test]
fn revoked_grant_needs_login_then_recovers() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    fake.revoke_all();
    let run = vault.run(&["token", "mail", "--min-valid", "7200"]);
    run.fails_with(3, "vault login mail");
    assert!(
        run.stderr.contains("invalid_grant") && run.stderr.contains("revoked"),
        "{}",
        run.stderr
    );
    let requests = fake.counters(|c| c.token_requests);
    vault
        .run(&["token", "mail", "--min-valid", "7200"])
        .fails_with(3, "vault login mail");
    assert_eq!(
        fake.counters(|c| c.token_requests),
        requests,
        "a dead grant is not retried upstream"
    );
    let status = vault.run(&["status", "mail"]);
    assert!(
        status.stdout.contains("reauth_required") && status.stdout.contains("invalid_grant"),
        "{}",
        status.stdout
    );

    vault.run(&["login", "mail", "--timeout", "30"]).ok();
    assert!(vault.run(&["status", "mail"]).stdout.contains("active"));
    token(&vault, &fake, &["mail", "--min-valid", "7200"]);
}

#[test]
fn rejected_client_secret_is_a_client_error() {
    let Scenario { fake, vault } = Scenario::new().account("acct");
    fake.configure(|b| b.client_secrets = vec!["rotated-on-the-console".into()]);
    vault
        .run(&["token", "acct", "--min-valid", "7200"])
        .fails_with(4, "invalid_client");
    assert!(
        vault
            .run(&["status", "acct"])
            .stdout
            .contains("client_error")
    );
}

#[test]
fn upstream_outage_is_transient_and_a_valid_token_is_still_served() {
    let Scenario { fake, vault } = Scenario::new().account("flaky");
    fake.inject(Fault::Unavailable503);
    let served = vault.run(&["token", "flaky", "--min-valid", "7200"]);
    served.ok();
    assert!(served.stderr.contains("cached token"), "{}", served.stderr);
    let status = vault.run(&["status", "flaky"]);
    assert!(
        status.stdout.contains("degraded") && !status.stdout.contains("reauth"),
        "{}",
        status.stdout
    );
    // Healthy again: the next refresh heals the account.
    token(&vault, &fake, &["flaky", "--min-valid", "7200"]);
    assert!(vault.run(&["status", "flaky"]).stdout.contains("active"));
}

#[test]
fn outage_with_an_expired_token_says_try_later() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| b.access_lifetime = 0);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "down").ok();
    for fault in [Fault::Unavailable503, Fault::Html, Fault::Garbage] {
        fake.inject(fault);
        vault
            .run(&["token", "down"])
            .fails_with(5, "try again later");
    }
    fake.inject(Fault::Slow(std::time::Duration::from_millis(1500)));
    token(&vault, &fake, &["down"]);
    assert!(vault.run(&["status", "down"]).stdout.contains("active"));
}
