//! `vault serve`: a real daemon process, a real Unix socket, the fake OAuth server upstream.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::support::TestVault;
use crate::support::daemon::{Daemon, get_concurrently, signal};
use crate::support::fake_oauth::{FakeOAuth, Fault, OfflineRule};
use crate::support::{Scenario, Served};
use crate::support::{add_with_browser, token};

/// A vault with one browser-added account whose cached token is already expired.
fn vault_with_expired_token(fake: &FakeOAuth, name: &str) -> TestVault {
    fake.configure(|b| b.access_lifetime = 0);
    let vault = TestVault::new(Some(fake));
    add_with_browser(&vault, fake, name).ok();
    fake.configure(|b| b.access_lifetime = 3600);
    vault
}

fn assert_no_secret_in(vault: &TestVault, text: &str) {
    for secret in vault.all_planted() {
        assert!(
            !text.contains(&secret),
            "a long-lived secret leaked: {text}"
        );
    }
}

#[test]
fn serves_tokens_over_the_socket_and_vault_token_uses_it() {
    let Served {
        fake,
        vault,
        daemon,
    } = Scenario::new().account("mail").serve(&[]);

    let socket_mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    let dir_mode = std::fs::metadata(daemon.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!((socket_mode, dir_mode), (0o600, 0o700));

    let answer = daemon.get("/v1/token/mail?min_valid=30");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let json = answer.json();
    assert!(fake.is_access_token(json["access_token"].as_str().unwrap()));
    assert_eq!(json["token_type"], "Bearer");
    assert!(json["expires_in"].as_i64().unwrap() > 3000);
    assert!(json["scope"].as_str().unwrap().contains("email"));
    assert_eq!(
        json.as_object().unwrap().len(),
        5,
        "only the access token's fields: {json}"
    );
    assert_no_secret_in(&vault, &answer.body);

    assert_eq!(daemon.get("/v1/health").json()["status"], "ok");
    let accounts = daemon.get("/v1/accounts").json();
    assert_eq!(accounts["accounts"][0]["name"], "mail");
    assert_eq!(accounts["accounts"][0]["state"], "active");
    assert_eq!(daemon.get("/v1/token/nobody-here").status, 404);

    let run = vault.run(&["token", "mail"]);
    run.ok();
    assert!(!run.stderr.contains("no daemon"), "{}", run.stderr);
    assert_eq!(run.stdout.trim(), json["access_token"].as_str().unwrap());
    let run = vault.run(&["token", "mail", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap()["token_type"],
        "Bearer"
    );

    let (status, _) = daemon.stop();
    assert!(status.success());
    assert!(!vault.socket().exists(), "the socket is removed on SIGTERM");

    let audit = std::fs::read_to_string(vault.dir.join("audit.log")).unwrap();
    assert!(
        audit.contains("\"account\":\"mail\"") && audit.contains("\"uid\":"),
        "{audit}"
    );
    assert!(
        !audit.contains(json["access_token"].as_str().unwrap()),
        "no token in the audit log"
    );
    assert_no_secret_in(&vault, &audit);
}

#[test]
fn a_thousand_concurrent_askers_cause_exactly_one_refresh() {
    let Scenario { fake, vault } = Scenario::new().expired_account("hot");
    // A slow provider: the askers arrive while the one refresh is in flight.
    fake.inject(Fault::Slow(Duration::from_millis(1500)));
    let daemon = Daemon::start(&vault, &[]);
    let answers = get_concurrently(&daemon.socket, "/v1/token/hot", 1000);
    assert_eq!(
        fake.counters(|c| c.refresh_grants),
        1,
        "exactly one upstream refresh"
    );
    let first = answers[0].json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["access_token"], first.as_str());
    }
    assert!(fake.is_access_token(&first));
}

#[test]
fn rotation_under_concurrency_never_spends_a_token_twice() {
    let Scenario { fake, vault } = Scenario::new()
        .configure(|b| b.rotate = true)
        .expired_account("rotating");
    fake.configure(|b| b.access_lifetime = 1);
    let daemon = Daemon::start(&vault, &[]);
    // The askers race the refresher across repeated expiries of a 1 s token.
    let rounds = 4;
    for _ in 0..rounds {
        let answers = get_concurrently(&daemon.socket, "/v1/token/rotating?min_valid=0", 200);
        for answer in &answers {
            assert_eq!(answer.status, 200, "{}", answer.body);
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert!(fake.counters(|c| c.refresh_grants) >= rounds);
    assert_eq!(
        fake.live_grants(),
        1,
        "the grant is alive: no rotated token was reused"
    );
    drop(daemon);
    // The CLI continues with the newest refresh token.
    token(
        &vault,
        &fake,
        &["rotating", "--no-daemon", "--min-valid", "0"],
    );
    assert_eq!(fake.live_grants(), 1);
}

#[test]
fn upstream_outage_serves_the_cache_then_503_and_never_revokes() {
    let Scenario { fake, vault } = Scenario::new().account("cached");
    let expired = vault_with_expired_token(&fake, "expired");
    let daemon = Daemon::start(&vault, &[]);

    fake.inject(Fault::Unavailable503);
    let answer = daemon.get("/v1/token/cached?min_valid=7200");
    assert_eq!(
        answer.status, 200,
        "a valid cached token is still served: {}",
        answer.body
    );
    assert_eq!(
        daemon.get("/v1/accounts").json()["accounts"][0]["state"],
        "degraded"
    );

    // The provider is down when the daemon starts: its first refresh fails.
    fake.inject(Fault::Unavailable503);
    let other = Daemon::start(&expired, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let answer = other.get("/v1/token/expired");
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.json()["error"], "upstream_unavailable");
    let retry_after: i64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=7).contains(&retry_after),
        "the provider's Retry-After (7 s) is honoured: {retry_after}"
    );
    // Within Retry-After the provider is left alone.
    let requests = fake.counters(|c| c.token_requests);
    assert_eq!(other.get("/v1/token/expired").status, 503);
    assert_eq!(fake.counters(|c| c.token_requests), requests);
    let accounts = other.get("/v1/accounts").json();
    assert_eq!(
        accounts["accounts"][0]["state"], "degraded",
        "never reauth_required for a 503"
    );
}

#[test]
fn a_dead_grant_answers_409_with_the_fix() {
    let Scenario { fake, vault } = Scenario::new().expired_account("dead");
    fake.revoke_all();
    let daemon = Daemon::start(&vault, &[]);
    let answer = daemon.get("/v1/token/dead");
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.json()["error"], "reauth_required");
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("vault login dead")
    );
    let run = vault.run(&["token", "dead"]);
    run.fails_with(3, "vault login dead");
    daemon.stop();
    let audit = std::fs::read_to_string(vault.dir.join("audit.log")).unwrap();
    assert!(audit.contains("\"to\":\"reauth_required\""), "{audit}");
}

#[test]
fn one_daemon_per_socket_and_stale_sockets_are_replaced() {
    let vault = TestVault::new(None);
    let first = Daemon::start(&vault, &[]);
    let second = vault.run(&["serve"]);
    second.fails_with(1, "already serving");
    // SIGKILL leaves the socket file behind; the next daemon replaces it.
    signal(&first.child, rustix::process::Signal::KILL);
    drop(first);
    assert!(vault.socket().exists());
    let again = Daemon::start(&vault, &[]);
    assert_eq!(again.get("/v1/health").status, 200);
}

#[test]
fn bad_requests_are_refused_and_never_stall_others() {
    let Served {
        fake: _fake,
        vault: _vault,
        daemon,
    } = Scenario::new().account("acct").serve(&[]);

    // A half-sent request stays open; others are answered meanwhile.
    let mut half = UnixStream::connect(&daemon.socket).unwrap();
    half.write_all(b"GET /v1/token/acct HTTP/1.1\r\nHost: loc")
        .unwrap();

    let raw = |bytes: &[u8]| -> Option<u16> {
        let mut stream = UnixStream::connect(&daemon.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(bytes);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        crate::support::daemon::parse(&answer).map(|a| a.status)
    };
    let status = raw(b"\x00\x01garbage\r\n\r\n");
    assert!(status.is_none_or(|s| s == 400), "garbage: {status:?}");
    let big = format!(
        "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let status = raw(big.as_bytes());
    assert!(
        status.is_none_or(|s| s == 431 || s == 400),
        "100 KB header: {status:?}"
    );
    assert_eq!(raw(b"POST /v1/token/acct HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), Some(405));
    assert_eq!(
        raw(b"GET /v1/token/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        Some(404)
    );
    assert_eq!(
        raw(b"GET /v1/token/acct?min_valid=-5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        Some(400)
    );
    assert_eq!(daemon.get("/v1/token/acct").status, 200);

    // The slow sender is cut off by the header timeout.
    half.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = half.read_to_end(&mut rest);
    let status = crate::support::daemon::parse(&rest).map(|a| a.status);
    assert!(
        status.is_none_or(|s| s == 408 || s == 400),
        "slow sender: {status:?}"
    );
    assert_eq!(daemon.get("/v1/health").status, 200);
}

#[test]
fn callers_of_another_uid_need_a_grant() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client as nobody");
        return;
    }
    let Scenario { fake, vault } = Scenario::new().account("shared");
    std::fs::set_permissions(vault.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&vault, &["--socket-group", "nogroup"]);
    let socket_mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(socket_mode, 0o660);

    let as_nobody = |path: &str| crate::support::daemon::get_as_nobody(&daemon.socket, path);
    let (status, refused) = as_nobody("/v1/token/shared");
    assert_eq!(status, 403, "{refused}");
    let (status, unknown) = as_nobody("/v1/token/no-such-account");
    assert_eq!(
        (status, &unknown),
        (403, &refused),
        "the same refusal whether or not the account exists"
    );
    assert_eq!(
        as_nobody("/v1/accounts").1["accounts"],
        serde_json::json!([])
    );

    vault.run(&["grant", "shared", "--uid", "nobody"]).ok();
    std::thread::sleep(Duration::from_millis(2500));
    let (status, answer) = as_nobody("/v1/token/shared");
    assert_eq!(status, 200, "{answer}");
    assert!(fake.is_access_token(answer["access_token"].as_str().unwrap()));

    vault
        .run(&["revoke-grant", "shared", "--uid", "65534"])
        .ok();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(as_nobody("/v1/token/shared").0, 403);
}

#[test]
fn sigterm_answers_requests_in_flight() {
    let Served {
        fake,
        vault: _vault,
        daemon,
    } = Scenario::new().expired_account("slow").serve(&[]);
    fake.inject(Fault::Slow(Duration::from_millis(1500)));
    let socket = daemon.socket.clone();
    let asker = std::thread::spawn(move || crate::support::daemon::get(&socket, "/v1/token/slow"));
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = daemon.stop();
    assert!(status.success());
    let answer = asker.join().unwrap();
    assert_eq!(
        answer.status, 200,
        "the request in flight was answered: {}",
        answer.body
    );
    assert!(fake.is_access_token(answer.json()["access_token"].as_str().unwrap()));
}

/// `vault token` runs on every send of a mail client; each shared library the `vault` front
/// program loads costs a measurable part of the call (libm.so alone ~75 µs: measured with a
/// hello world with and without it). A change that pulls one into the front fails here rather
/// than silently in the benchmark.
#[test]
fn vault_loads_no_shared_library_beyond_libc() {
    let output = std::process::Command::new("readelf")
        .args(["--dynamic", "--wide", env!("CARGO_BIN_EXE_vault")])
        .output()
        .expect("readelf (binutils) runs");
    let dynamic = String::from_utf8_lossy(&output.stdout);
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| line.split('[').nth(1)?.split(']').next())
        .collect();
    assert!(!needed.is_empty(), "no NEEDED entries read: {dynamic}");
    for library in &needed {
        assert!(
            ["libc.so", "libgcc_s.so", "ld-linux"]
                .iter()
                .any(|allowed| library.starts_with(allowed)),
            "vault now needs {library}: {needed:?}"
        );
    }
}

#[test]
fn metrics_are_openmetrics_for_the_owner_only() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| b.refresh_token_lifetime = Some(86_400));
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "mail").ok();
    std::fs::set_permissions(vault.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        vault.dir.join("config.toml"),
        "[alert]\ndesktop = false\n[validation]\nschedule = \"*/2 * * * * *\"\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        &vault,
        &["--socket-group", "nogroup", "--metrics-addr", &metrics_addr],
    );
    assert_eq!(daemon.get("/v1/token/mail").status, 200);
    assert_eq!(daemon.get("/v1/token/mail").status, 200);
    // A scheduled validation: one upstream call.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fake.counters(|c| c.refresh_grants) == 0 {
        assert!(std::time::Instant::now() < deadline, "no validation");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let answer = daemon.get("/v1/metrics");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert_no_secret_in(&vault, &answer.body);
    // Parsed by the Prometheus project's own parser.
    let parsed = crate::support::run_with_input(
        {
            let mut python = std::process::Command::new("python3");
            python.args([
                "-c",
                "import json, sys\n\
                 from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
                 samples = [[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
                 print(json.dumps(samples))",
            ]);
            python
        },
        &answer.body,
    );
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let samples: Vec<(String, serde_json::Value, f64)> =
        serde_json::from_slice(&parsed.stdout).unwrap();
    let value = |name: &str, labels: serde_json::Value| {
        samples
            .iter()
            .find(|(sample, sample_labels, _)| sample == name && *sample_labels == labels)
            .map(|(_, _, value)| *value)
            .unwrap_or_else(|| panic!("no {name} {labels} in {samples:?}"))
    };
    use serde_json::json;
    assert_eq!(
        value("tokenvault_accounts", json!({"state": "active"})),
        1.0
    );
    assert!(
        value(
            "tokenvault_upstream_calls_total",
            json!({"account": "mail", "purpose": "validation", "outcome": "refreshed"})
        ) >= 1.0
    );
    assert!(value("tokenvault_token_answers_total", json!({"status": "200"})) >= 2.0);
    assert!(
        value(
            "tokenvault_access_token_expiry_seconds",
            json!({"account": "mail"})
        ) > 3000.0
    );
    assert!(
        value(
            "tokenvault_refresh_token_deadline_seconds",
            json!({"account": "mail"})
        ) > 80_000.0
    );
    assert!(value("tokenvault_upstream_call_duration_seconds_count", json!({})) >= 1.0);
    // The opt-in loopback endpoint serves the same exposition to Prometheus, and nothing else.
    let scraped = std::process::Command::new("curl")
        .args(["-s", &format!("http://{metrics_addr}/metrics")])
        .output()
        .unwrap();
    let scraped = String::from_utf8_lossy(&scraped.stdout);
    assert!(
        scraped.contains("tokenvault_accounts{state=\"active\"} 1"),
        "{scraped}"
    );
    let token = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{metrics_addr}/v1/token/mail"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&token.stdout), "404");
    // Another user, even one the socket lets in, gets no metrics from the socket.
    if rustix::process::geteuid().is_root() {
        use std::os::unix::process::CommandExt;
        let output = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(&daemon.socket)
            .arg("http://localhost/v1/metrics")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "403");
    }
}

/// `curl -N` on the event stream, its lines collected as they come.
pub(crate) struct EventReader {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EventReader {
    pub(crate) fn start(socket: &std::path::Path, last_event_id: Option<&str>) -> EventReader {
        use std::io::BufRead;
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sN", "--unix-socket"]).arg(socket);
        if let Some(id) = last_event_id {
            curl.args(["-H", &format!("Last-Event-ID: {id}")]);
        }
        let mut child = curl
            .arg("http://localhost/v1/events")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (kept, stdout) = (lines.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                kept.lock().unwrap().push(line);
            }
        });
        EventReader { child, lines }
    }

    /// The id of the first event whose data contains `needle`, waiting up to `limit`.
    pub(crate) fn wait_for(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            {
                let lines = self.lines.lock().unwrap();
                for (index, line) in lines.iter().enumerate() {
                    if line.starts_with("data:") && line.contains(needle) && index >= 2 {
                        return lines[index - 2].strip_prefix("id: ").map(str::to_owned);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_event_stream_tells_apps_of_new_and_dead_tokens_and_resumes() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    std::fs::write(
        vault.dir.join("config.toml"),
        "[alert]\ndesktop = false\n[validation]\nschedule = \"*/2 * * * * *\"\n",
    )
    .unwrap();
    let daemon = Daemon::start(&vault, &[]);
    let stream = EventReader::start(&daemon.socket, None);
    // A validation replaces the token: apps holding the old one hear of it.
    assert!(
        stream
            .wait_for(
                "\"account\":\"mail\",\"expires_at\"",
                Duration::from_secs(10)
            )
            .is_some(),
        "no token event: {:?}",
        stream.lines.lock().unwrap()
    );
    fake.revoke_all();
    let dead = stream
        .wait_for("\"state\":\"reauth_required\"", Duration::from_secs(10))
        .expect("no state event");
    let seen = stream.lines.lock().unwrap().join("\n");
    for token in fake.secrets() {
        assert!(!seen.contains(&token), "a secret in the event stream");
    }
    for word in seen.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        assert!(
            !fake.is_access_token(word),
            "an access token in the event stream"
        );
    }
    drop(stream);
    // A client that was away resumes after the last event it saw.
    let previous = (dead.parse::<u64>().unwrap() - 1).to_string();
    let resumed = EventReader::start(&daemon.socket, Some(&previous));
    assert_eq!(
        resumed.wait_for("\"state\":\"reauth_required\"", Duration::from_secs(5)),
        Some(dead)
    );
}

/// `vault` answers `vault token` from the daemon on its own; everything else it hands to
/// `vault-full` from its own directory, and says how to install it when it is not there.
#[test]
fn the_front_answers_tokens_alone_and_needs_vault_full_for_the_rest() {
    let Served {
        fake,
        vault,
        daemon: _daemon,
    } = Scenario::new().account("mail").serve(&[]);
    let alone = vault.root.path().join("bin-without-full");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_vault"), alone.join("vault")).unwrap();
    let front_alone = |args: &[&str]| {
        let mut command = vault.program(alone.join("vault").to_str().unwrap());
        command.args(args);
        vault.run_command(command, None)
    };
    let token = front_alone(&["token", "mail"]);
    token.ok();
    assert!(
        fake.is_access_token(token.stdout.trim()),
        "{}",
        token.stdout
    );
    let json = front_alone(&["token", "mail", "--json", "--min-valid", "120"]);
    json.ok();
    assert!(
        json.stdout.contains("\"token_type\":\"Bearer\""),
        "{}",
        json.stdout
    );
    front_alone(&["list"]).fails_with(1, "vault-full");
    front_alone(&["token", "mail", "--no-daemon"]).fails_with(1, "cargo install --path .");
    // Beside each other, as installed, every verb works through the front.
    vault.run(&["list"]).ok();
    vault.run(&["token", "mail", "--no-daemon"]).ok();
}

/// Refreshes in the daemon and in `vault token` exclude each other through one lock file for
/// the whole vault, not a file per account.
#[test]
fn refreshes_of_many_accounts_share_one_lock_file() {
    let Served {
        fake,
        vault,
        daemon,
    } = Scenario::new()
        .expired_account("a")
        .expired_account("b")
        .expired_account("c")
        .serve(&[]);
    for name in ["a", "b"] {
        assert_eq!(daemon.get(&format!("/v1/token/{name}")).status, 200);
    }
    token(&vault, &fake, &["c", "--no-daemon"]);
    assert_eq!(fake.counters(|c| c.refresh_grants), 3);
    let mut names: Vec<String> = std::fs::read_dir(&vault.dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("vault.db") && name != "audit.log")
        .collect();
    names.sort();
    assert_eq!(names, ["refresh.lock"]);
}

/// A caller that hangs up while its refresh is out does not cancel that refresh: the provider
/// has already rotated the refresh token, and the answer holds the only copy of the new one.
/// The daemon commits it anyway; the grant lives on (a provider that kills the whole grant on
/// any reuse would otherwise see the old token again).
#[test]
fn a_caller_hanging_up_mid_refresh_does_not_lose_the_rotated_token() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| b.rotate = true);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "mail").ok();
    let daemon = Daemon::start(&vault, &[]);
    // Past the spacing that answers a just-issued token to a min_valid it cannot meet.
    std::thread::sleep(Duration::from_secs(31));
    fake.inject(Fault::SlowAnswer(Duration::from_secs(3)));
    let requests = fake.counters(|c| c.refresh_grants);
    let gave_up = std::process::Command::new("curl")
        .args(["-s", "--max-time", "1", "--unix-socket"])
        .arg(&daemon.socket)
        .arg("http://localhost/v1/token/mail?min_valid=3590")
        .output()
        .unwrap();
    assert!(!gave_up.status.success(), "curl gave up before the answer");
    assert_eq!(fake.counters(|c| c.refresh_grants), requests + 1);
    std::thread::sleep(Duration::from_secs(4));
    let answer = daemon.get("/v1/token/mail?min_valid=3590");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (_, _, alive) = fake.newest_grant().unwrap();
    assert!(
        alive,
        "the rotated refresh token was lost: the old one was presented again"
    );
}

/// The provider rotates the refresh token while another process holds the vault locked longer
/// than a write waits (10 s): the new token cannot be stored. The daemon says so at once — a
/// `refresh_token_uncommitted` alert naming the fix — rather than leaving it to the next
/// refresh's `invalid_grant`.
#[test]
fn a_rotated_refresh_token_that_cannot_be_stored_is_alerted_at_once() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| b.rotate = true);
    let vault = vault_with_expired_token(&fake, "mail");
    std::fs::write(
        vault.dir.join("config.toml"),
        format!(
            "[alert]\nwebhook = \"{}/webhook\"\ndesktop = false\n",
            fake.base
        ),
    )
    .unwrap();
    // The daemon refreshes the expired token at once; the provider rotates, then answers 2 s on.
    fake.inject(Fault::SlowAnswer(Duration::from_secs(2)));
    let refreshes = fake.counters(|c| c.refresh_grants);
    let _daemon = Daemon::start(&vault, &[]);
    assert!(crate::support::eventually(Duration::from_secs(10), || {
        fake.counters(|c| c.refresh_grants) > refreshes
    }));
    let holder = rusqlite::Connection::open(vault.db_path()).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let alerted = || {
        fake.webhooks()
            .into_iter()
            .find(|hook| hook["event"] == "refresh_token_uncommitted")
    };
    assert!(
        crate::support::eventually(Duration::from_secs(25), || alerted().is_some()),
        "{:?}",
        fake.webhooks()
    );
    holder.execute_batch("ROLLBACK").unwrap();
    let hook = alerted().unwrap();
    assert_eq!(hook["account"], "mail");
    let reason = hook["reason"].as_str().unwrap();
    assert!(reason.contains("vault login mail"), "{reason}");
    assert_no_secret_in(&vault, &hook.to_string());
    let (rotated, _, _) = fake.newest_grant().unwrap();
    assert!(
        !hook.to_string().contains(&rotated),
        "the new refresh token leaked"
    );
}
