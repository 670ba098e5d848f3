//! A provider answering absurd numbers, 400 MB, or control characters: clamped, bounded,
//! stripped — never a panic, a stalled account or a terminal escape.

use std::time::Duration;

use crate::support::Scenario;
use crate::support::TestVault;
use crate::support::daemon::Daemon;
use crate::support::fake_oauth::{Fault, OfflineRule};
use crate::support::{add_with_browser, token};
use crate::support::{alert_lines, alerting_config, eventually};

const YEAR: i64 = 365 * 24 * 3600;

#[test]
fn absurd_lifetimes_are_clamped_and_never_panic() {
    // u64::MAX and 2^63 wrapped to the past (a refresh every second); 3·10^11 overflowed the
    // date formatting: add-account stored the account and then panicked, and so did status.
    for lifetime in [u64::MAX, 1 << 63, 300_000_000_000] {
        let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
        fake.configure(|b| b.access_lifetime = lifetime);
        let vault = TestVault::new(Some(&fake));
        add_with_browser(&vault, &fake, "mail").ok();
        vault.run(&["status"]).ok();
        vault.run(&["status", "mail"]).ok();
        let asked = fake.counters(|c| c.token_requests);
        token(&vault, &fake, &["mail", "--no-daemon"]);
        assert_eq!(
            fake.counters(|c| c.token_requests),
            asked,
            "served from the cache"
        );
        let expires_at = vault
            .open_store()
            .account("mail")
            .unwrap()
            .access_expires_at
            .unwrap();
        let now = tokenvault::clock::now_unix();
        assert!(
            expires_at > now && expires_at <= now + YEAR,
            "{lifetime}: {expires_at}"
        );
    }
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_400_mb_answer_is_not_read() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    let daemon = Daemon::start(&vault, &[]);
    fake.inject(Fault::Huge(400 << 20));
    // A token valid 2 hours cannot come from the cache: the daemon must ask the provider.
    let answer = daemon.get("/v1/token/mail?min_valid=7200");
    assert!(
        matches!(answer.status, 200 | 503),
        "{} {}",
        answer.status,
        answer.body
    );
    let rss = resident_kib(daemon.child.id());
    assert!(rss < 100 * 1024, "the daemon grew to {rss} KiB");
    // The account is only degraded: the next good answer heals it.
    let answer = daemon.get("/v1/token/mail?min_valid=60");
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[test]
fn control_characters_from_a_provider_are_stripped_and_the_alert_still_runs() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    let alerts = alerting_config(&vault, &fake, "");
    let daemon = Daemon::start(&vault, &[]);
    // OSC 52 writes the clipboard of the terminal that prints it; a NUL in VAULT_REASON kept
    // the alert command from starting, so a provider could silence its own revocation alert.
    fake.inject(Fault::Rejected(
        "\u{1b}]52;c;cHduZWQ=\u{7}revoked\u{0}by an admin\r\n".into(),
    ));
    assert_eq!(daemon.get("/v1/token/mail?min_valid=7200").status, 409);
    assert!(
        eventually(Duration::from_secs(8), || !alert_lines(&alerts).is_empty()),
        "no alert"
    );
    let lines = alert_lines(&alerts);
    assert!(lines[0].contains("revoked by an admin"), "{lines:?}");
    let status = vault.run(&["status", "mail"]);
    status.ok();
    for shown in [&status.stdout, &lines[0]] {
        assert!(
            !shown.contains(['\u{1b}', '\u{7}', '\u{0}']),
            "a control character got through: {shown:?}"
        );
    }
}

#[test]
fn an_absurd_retry_after_is_capped_by_the_backoff() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| b.access_lifetime = 2);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "mail").ok();
    std::fs::write(
        vault.dir.join("config.toml"),
        "[refresh]\nmax_backoff_seconds = 60\n[alert]\ndesktop = false\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // No valid token is cached any more; the provider asks to come back in 3,000 years.
    for _ in 0..4 {
        fake.inject(Fault::RetryAfter("99999999999".into()));
    }
    let daemon = Daemon::start(&vault, &[]);
    let answer = daemon.get("/v1/token/mail");
    assert_eq!(answer.status, 503, "{}", answer.body);
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after <= 60, "Retry-After {retry_after}");
}

#[test]
fn a_min_valid_beyond_the_lifetime_does_not_turn_requests_into_refreshes() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| {
        b.access_lifetime = 600;
        b.rotate = true;
    });
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "mail").ok();
    let daemon = Daemon::start(&vault, &[]);
    let before = fake.counters(|c| c.refresh_grants);
    for _ in 0..20 {
        let answer = daemon.get("/v1/token/mail?min_valid=3600");
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let refreshes = fake.counters(|c| c.refresh_grants) - before;
    assert!(
        refreshes <= 1,
        "{refreshes} upstream refreshes for 20 requests"
    );
}

#[test]
fn a_lost_refresh_answer_is_retried_at_once_with_the_same_token() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    fake.configure(|b| {
        b.rotate = true;
        b.reuse_grace = Some(Duration::from_secs(30));
    });
    // The provider rotates the refresh token, and the answer is lost on the way back. A server
    // with a reuse grace answers the immediate retry: the command succeeds as if nothing happened.
    fake.inject(Fault::LoseAnswer);
    token(
        &vault,
        &fake,
        &["mail", "--no-daemon", "--min-valid", "7200"],
    );
    assert_eq!(fake.counters(|c| c.refresh_grants), 2, "one retry");
    token(
        &vault,
        &fake,
        &["mail", "--no-daemon", "--min-valid", "7200"],
    );
    vault.run(&["validate", "mail"]).ok();
}

#[test]
fn a_lost_refresh_answer_on_a_strict_server_is_a_dead_grant_said_at_once() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    fake.configure(|b| b.rotate = true);
    // No grace: the retry is a reuse, and the server kills the grant. Nothing could have saved
    // it once the first request left; the vault says so now instead of at the next refresh.
    fake.inject(Fault::LoseAnswer);
    vault
        .run(&["token", "mail", "--no-daemon", "--min-valid", "7200"])
        .fails_with(3, "vault login mail");
    let status = vault.run(&["status", "mail"]);
    assert!(
        status.stdout.contains("reauth_required"),
        "{}",
        status.stdout
    );
}

#[test]
fn microsoft_and_google_refusals_name_their_real_cause_and_fix() {
    use serde_json::json;
    let cases = [
        // (answer, exit code, state, words the user must see)
        (
            400,
            json!({"error": "invalid_grant", "error_description": "AADSTS700082: The refresh token has expired due to inactivity. The token was issued on 2026-08-01 and was inactive for 90.00:00:00.", "error_codes": [700082]}),
            3,
            "reauth_required",
            "90 days without use",
        ),
        (
            401,
            json!({"error": "invalid_client", "error_description": "AADSTS7000222: The provided client secret keys for app 'x' are expired.", "error_codes": [7000222]}),
            4,
            "client_error",
            "create a new one in the app registration",
        ),
        (
            400,
            json!({"error": "invalid_grant", "error_description": "reauth related error (invalid_rapt)", "error_subtype": "invalid_rapt"}),
            3,
            "reauth_required",
            "not a revocation",
        ),
        (
            400,
            json!({"error": "invalid_grant", "error_description": "AADSTS50076: Due to a configuration change made by your administrator, you must use multi-factor authentication.", "error_codes": "not a list"}),
            3,
            "reauth_required",
            "multi-factor authentication",
        ),
    ];
    for (status, answer, code, state, words) in cases {
        let Scenario { fake, vault } = Scenario::new().account("mail");
        fake.inject(Fault::Answer(status, answer));
        let run = vault.run(&["token", "mail", "--no-daemon", "--min-valid", "7200"]);
        run.fails_with(code, words);
        if state == "reauth_required" {
            assert!(!run.stderr.contains("Likely causes"), "{}", run.stderr);
        }
        let shown = vault.run(&["status", "mail"]);
        assert!(
            shown.stdout.contains(state) && shown.stdout.contains(words),
            "{}",
            shown.stdout
        );
    }
}

/// The provider issues an account's first tokens, then takes 3 s to answer: their lifetime
/// counts from when the request left, so a token with less left than asked for is not served
/// as if its whole lifetime had started when the answer arrived.
#[test]
fn a_slow_first_answer_does_not_stretch_the_tokens_lifetime() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| b.access_lifetime = 8);
    let vault = TestVault::new(Some(&fake));
    fake.inject(Fault::SlowAnswer(Duration::from_secs(3)));
    add_with_browser(&vault, &fake, "mail").ok();
    let asked_at = std::time::Instant::now();
    let run = vault.run(&["token", "mail", "--min-valid", "6", "--no-daemon"]);
    let token = run.ok().stdout.trim().to_owned();
    assert!(
        fake.was_live_access_token(&token, asked_at + Duration::from_secs(6)),
        "a token with less than the 6 s asked for was served"
    );
}
