//! The daemon's background duties: refresh ahead, scheduled validation, backoff and alerts.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::support::Scenario;
use crate::support::TestVault;
use crate::support::daemon::Daemon;
use crate::support::fake_oauth::OfflineRule;
use crate::support::{add_with_browser, alert_lines, alerting_config, eventually, token};

#[test]
fn short_lived_tokens_are_refreshed_ahead_and_askers_never_wait() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| b.access_lifetime = 6);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "short").ok();
    // Every answer from the provider takes half a second; askers must never see that.
    fake.configure(|b| b.delay = Some(Duration::from_millis(500)));
    let daemon = Daemon::start(&vault, &[]);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(15) {
        let asked = Instant::now();
        let answer = daemon.get("/v1/token/short?min_valid=1");
        slowest = slowest.max(asked.elapsed());
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(
            answer.json()["expires_in"].as_i64().unwrap() >= 1,
            "{}",
            answer.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let refreshes = fake.counters(|c| c.refresh_grants);
    assert!(
        (3..=9).contains(&refreshes),
        "a refresh every 2–4 s, no storm: {refreshes}"
    );
    assert!(
        slowest < Duration::from_millis(450),
        "an asker waited on the provider: {slowest:?}"
    );
}

#[test]
fn a_revoked_grant_is_found_by_validation_and_alerted_once() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    let alerts = alerting_config(
        &vault,
        &fake,
        "[validation]\nschedule = \"*/2 * * * * *\"\n",
    );
    let daemon = Daemon::start(&vault, &[]);
    fake.revoke_all();
    assert!(
        eventually(Duration::from_secs(8), || !alert_lines(&alerts).is_empty()),
        "no alert"
    );
    std::thread::sleep(Duration::from_secs(3));
    let lines = alert_lines(&alerts);
    assert_eq!(lines.len(), 1, "one alert per state change: {lines:?}");
    assert!(
        lines[0].starts_with("mail|reauth_required|") && lines[0].contains("invalid_grant"),
        "{lines:?}"
    );
    let hooks = fake.webhooks();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["account"], "mail");
    assert_eq!(hooks[0]["event"], "reauth_required");
    let status = vault.run(&["status", "mail"]);
    assert!(
        status.stdout.contains("reauth_required"),
        "{}",
        status.stdout
    );
    // Its cached access token has an hour left, but the grant is dead: no app gets it any more.
    let answer = daemon.get("/v1/token/mail");
    assert_eq!(answer.status, 409, "{}", answer.body);
    for secret in vault.all_planted() {
        assert!(!lines[0].contains(&secret) && !hooks[0].to_string().contains(&secret));
    }

    // Re-authorized: the daemon notices and says "recovered", once.
    vault.run(&["login", "mail", "--timeout", "30"]).ok();
    assert!(
        eventually(Duration::from_secs(6), || alert_lines(&alerts).len() == 2),
        "{:?}",
        alert_lines(&alerts)
    );
    assert!(alert_lines(&alerts)[1].starts_with("mail|recovered|"));
    assert_eq!(daemon.get("/v1/token/mail").status, 200);
}

#[test]
fn reuse_of_a_rotated_refresh_token_is_caught() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| b.rotate = true);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "rotated").ok();
    token(
        &vault,
        &fake,
        &["rotated", "--no-daemon", "--min-valid", "7200"],
    );
    let alerts = alerting_config(
        &vault,
        &fake,
        "[validation]\nschedule = \"*/2 * * * * *\"\n",
    );
    let _daemon = Daemon::start(&vault, &[]);
    // A leaked copy of the first refresh token is replayed: the provider kills the grant.
    fake.replay_first_refresh_token();
    assert!(eventually(Duration::from_secs(8), || !alert_lines(&alerts).is_empty()));
    assert!(
        alert_lines(&alerts)[0].starts_with("rotated|reauth_required|"),
        "{:?}",
        alert_lines(&alerts)
    );
}

#[test]
fn a_rejected_client_secret_alerts_client_error() {
    let Scenario { fake, vault } = Scenario::new().account("acct");
    let alerts = alerting_config(
        &vault,
        &fake,
        "[validation]\nschedule = \"*/2 * * * * *\"\n",
    );
    let _daemon = Daemon::start(&vault, &[]);
    fake.configure(|b| b.client_secrets = vec!["rotated-on-the-console".into()]);
    assert!(eventually(Duration::from_secs(8), || !alert_lines(&alerts).is_empty()));
    std::thread::sleep(Duration::from_secs(3));
    let lines = alert_lines(&alerts);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("acct|client_error|") && lines[0].contains("invalid_client"),
        "{lines:?}"
    );
}

#[test]
fn an_outage_is_degraded_then_recovered_never_revoked() {
    let Scenario { fake, vault } = Scenario::new().account("flaky");
    let alerts = alerting_config(
        &vault,
        &fake,
        "degraded_after_seconds = 1\n[validation]\nschedule = \"* * * * * *\"\n",
    );
    fake.configure(|b| b.down_until = Some(Instant::now() + Duration::from_secs(4)));
    let daemon = Daemon::start(&vault, &[]);
    assert!(
        eventually(Duration::from_secs(30), || alert_lines(&alerts)
            .iter()
            .any(|l| l.contains("|recovered|"))),
        "{:?}",
        alert_lines(&alerts)
    );
    let lines = alert_lines(&alerts);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("flaky|degraded|"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("reauth_required")));
    assert_eq!(
        daemon.get("/v1/accounts").json()["accounts"][0]["state"],
        "active"
    );
}

#[test]
fn bad_config_refuses_to_start_with_line_and_reason() {
    let vault = TestVault::new(None);
    for (config, needle) in [
        (
            "[validation]\nschedule = \"every six hours\"\n",
            "six fields",
        ),
        (
            "[alert]\nwebhok = \"https://example.com\"\n",
            "unknown field",
        ),
        (
            "[alert]\nwebhook = \"ftp://example.com\"\n",
            "http or https",
        ),
        (
            "[refresh]\nmax_backoff_seconds = \"soon\"\n",
            "invalid type",
        ),
    ] {
        std::fs::write(vault.dir.join("config.toml"), config).unwrap();
        let run = vault.run(&["serve"]);
        run.fails_with(1, needle);
        assert!(run.stderr.contains("line "), "{}", run.stderr);
        assert!(!vault.socket().exists());
    }
    vault
        .run(&["schedule", "nobody", "not cron"])
        .fails_with(1, "six fields");
}

#[test]
fn a_restarted_daemon_serves_the_persisted_token_without_refreshing() {
    let Scenario { fake, vault } = Scenario::new().account("kept");
    let first = Daemon::start(&vault, &[]);
    let token = first.get("/v1/token/kept").json()["access_token"].clone();
    first.stop();
    let second = Daemon::start(&vault, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(second.get("/v1/token/kept").json()["access_token"], token);
    assert_eq!(
        fake.counters(|c| c.refresh_grants),
        0,
        "no refresh storm after a restart"
    );
}

#[test]
fn an_account_can_have_its_own_refresh_margin_and_schedule() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| b.access_lifetime = 16);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "default-margin").ok();
    add_with_browser(&vault, &fake, "late-margin").ok();
    // Default for a 16 s token: 8 s ahead (4–8 s after issue). This one: 2 s ahead (13–14 s).
    vault
        .run(&["schedule", "late-margin", "--refresh-before", "2"])
        .ok();
    vault.run(&["schedule", "late-margin", "0 0 0 1 1 *"]).ok();
    vault
        .run(&["schedule", "late-margin", "--refresh-before", "soon"])
        .fails_with(1, "number of seconds");
    let added = |name: &str| vault.open_store().account(name).unwrap().last_refresh_at;
    let (default_before, late_before) = (added("default-margin"), added("late-margin"));
    let _daemon = Daemon::start(&vault, &[]);
    std::thread::sleep(Duration::from_millis(9500));
    assert_ne!(
        added("default-margin"),
        default_before,
        "refreshed 8 s ahead"
    );
    assert_eq!(
        added("late-margin"),
        late_before,
        "not yet: its own margin is 2 s"
    );
    vault
        .run(&[
            "schedule",
            "late-margin",
            "default",
            "--refresh-before",
            "default",
        ])
        .ok();
}

#[test]
fn vault_validate_proves_each_account_now() {
    let Scenario { fake, vault } = Scenario::new().account("alive");
    add_with_browser(&vault, &fake, "other").ok();
    let run = vault.run(&["validate"]);
    run.ok();
    assert!(
        run.stdout.contains("alive: ok") && run.stdout.contains("other: ok"),
        "{}",
        run.stdout
    );
    assert_eq!(
        fake.counters(|c| c.refresh_grants),
        2,
        "one live refresh each"
    );
    fake.revoke_all();
    let run = vault.run(&["validate", "alive"]);
    assert_eq!(run.code, 3, "{}", run.stdout);
    assert!(
        run.stdout.contains("alive: FAILED") && run.stdout.contains("vault login alive"),
        "{}",
        run.stdout
    );
    let status = vault.run(&["status", "alive"]);
    assert!(
        status.stdout.contains("reauth_required"),
        "{}",
        status.stdout
    );
}

#[test]
fn a_refresh_token_deadline_is_alerted_once_ahead_of_it() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    // A Google app in "Testing" status: the refresh token dies in an hour, and says so.
    fake.configure(|b| b.refresh_token_lifetime = Some(3600));
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "mail").ok();
    let alerts = alerting_config(&vault, &fake, "expiring_before_seconds = 7200\n");
    let daemon = Daemon::start(&vault, &[]);
    assert!(
        eventually(Duration::from_secs(8), || !alert_lines(&alerts).is_empty()),
        "no alert"
    );
    let lines = alert_lines(&alerts);
    assert!(
        lines[0].starts_with("mail|expiring|") && lines[0].contains("vault login mail"),
        "{lines:?}"
    );
    // Once per deadline, across restarts of the daemon too.
    drop(daemon);
    let _daemon = Daemon::start(&vault, &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alert_lines(&alerts).len(), 1, "{:?}", alert_lines(&alerts));
    let status = vault.run(&["status", "mail"]);
    assert!(
        status.stdout.contains("refresh expires"),
        "{}",
        status.stdout
    );
}

/// One request a webhook receiver got: its headers (names in lower case) and body.
type Received = (Vec<(String, String)>, Vec<u8>);

/// A webhook receiver: answers 500 to the first `failures` requests, then 204; keeps each
/// request's headers and body.
struct WebhookSink {
    url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl WebhookSink {
    fn start(failures: usize) -> WebhookSink {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = received.clone();
        std::thread::spawn(move || {
            for (index, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                    }
                }
                let length = headers
                    .iter()
                    .find(|(name, _)| name == "content-length")
                    .and_then(|(_, value)| value.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                kept.lock().unwrap().push((headers, body));
                let status = if index < failures {
                    "500 Internal Server Error"
                } else {
                    "204 No Content"
                };
                let _ = stream.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        WebhookSink { url, received }
    }
}

#[test]
fn webhooks_are_signed_and_retried_with_the_same_id() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    let sink = WebhookSink::start(1);
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let secret_file = vault.root.path().join("webhook.secret");
    crate::support::write_private(&secret_file, &format!("{secret}\n"));
    std::fs::write(
        vault.dir.join("config.toml"),
        format!(
            "[alert]\nwebhook = \"{}\"\nwebhook_secret_file = \"{}\"\ndesktop = false\n[validation]\nschedule = \"*/2 * * * * *\"\n",
            sink.url,
            secret_file.display()
        ),
    )
    .unwrap();
    let _daemon = Daemon::start(&vault, &[]);
    fake.revoke_all();
    assert!(
        eventually(Duration::from_secs(15), || sink
            .received
            .lock()
            .unwrap()
            .len()
            >= 2),
        "the webhook was not retried after a 500"
    );
    let received = sink.received.lock().unwrap().clone();
    let header = |index: usize, name: &str| {
        received[index]
            .0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    assert!(header(0, "webhook-id").starts_with("msg_"));
    assert_eq!(
        header(0, "webhook-id"),
        header(1, "webhook-id"),
        "one id across retries"
    );
    // Checked by an independent implementation: Python's hmac, as the Standard Webhooks
    // libraries do it.
    for (index, (_, body)) in received.iter().enumerate() {
        let body_file = vault.root.path().join(format!("body-{index}"));
        std::fs::write(&body_file, body).unwrap();
        let expected = std::process::Command::new("python3")
            .args([
                "-c",
                "import base64, hashlib, hmac, sys\n\
                 key = base64.b64decode(sys.argv[1].split('_', 1)[1])\n\
                 message = f'{sys.argv[2]}.{sys.argv[3]}.'.encode() + open(sys.argv[4], 'rb').read()\n\
                 print('v1,' + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode())",
                secret,
                &header(index, "webhook-id"),
                &header(index, "webhook-timestamp"),
                body_file.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(
            header(index, "webhook-signature"),
            String::from_utf8_lossy(&expected.stdout).trim(),
            "attempt {index}"
        );
        let alert: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(alert["event"], "reauth_required");
    }
    // A secret others can read is refused at start, with the fix.
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    vault
        .run(&[
            "serve",
            "--socket",
            vault.root.path().join("other.sock").to_str().unwrap(),
        ])
        .fails_with(1, "chmod 600");
}

#[test]
fn json_logs_for_machines_with_journal_priorities_under_systemd() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    let alerts = alerting_config(
        &vault,
        &fake,
        "[validation]\nschedule = \"*/2 * * * * *\"\n",
    );
    let mut command = vault.command(&["serve", "--log-format", "json"]);
    command
        .env("JOURNAL_STREAM", "8:12345")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let daemon = Daemon {
        child: command.spawn().unwrap(),
        socket: vault.socket(),
    };
    fake.revoke_all();
    assert!(eventually(Duration::from_secs(10), || !alert_lines(
        &alerts
    )
    .is_empty()));
    let (_, stderr) = daemon.stop();
    let mut saw_alert = false;
    for line in stderr.lines() {
        let (priority, json) = line.split_at(3);
        assert!(matches!(priority, "<4>" | "<6>"), "{line}");
        let entry: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            entry["time"].is_string() && entry["level"].is_string(),
            "{line}"
        );
        if entry["message"] == "alert" {
            assert_eq!(
                (priority, &entry["account"], &entry["event"]),
                (
                    "<4>",
                    &serde_json::json!("mail"),
                    &serde_json::json!("reauth_required")
                )
            );
            saw_alert = true;
        }
    }
    assert!(saw_alert, "{stderr}");
}

/// A refresh already in flight when `vault login` replaces the grant must not overwrite the
/// login: here the old grant's late `invalid_grant` would mark the freshly authorized account
/// dead. Its commit is fenced on the account's generation and refused as superseded.
#[test]
fn a_login_wins_over_a_refresh_in_flight() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    fake.inject(tokenvault::devprovider::Fault::Slow(Duration::from_secs(4)));
    let asked = fake.counters(|counters| counters.token_requests);
    let in_flight = vault
        .command(&["token", "mail", "--no-daemon", "--min-valid", "7200"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        fake.counters(|counters| counters.token_requests) > asked
    }));
    // The user revokes the old grant and authorizes again while that refresh is on the wire.
    fake.revoke_all();
    vault.run(&["login", "mail", "--timeout", "30"]).ok();
    let late = in_flight.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&late.stderr);
    assert!(!late.status.success(), "{said}");
    assert!(said.contains("changed by another vault command"), "{said}");
    let status = vault.run(&["status", "mail"]);
    assert!(status.stdout.contains("active"), "{}", status.stdout);
    token(&vault, &fake, &["mail", "--no-daemon"]);
}
