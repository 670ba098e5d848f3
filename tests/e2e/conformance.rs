//! Conformance: the `vault` binary against an independent, certified OpenID provider (panva's
//! oidc-provider, pinned in tests/conformance/package-lock.json, started by each test on
//! 127.0.0.1 through tests/conformance/server.mjs). Where these tests and the built-in provider
//! (src/devprovider.rs) disagree, the built-in provider is what is wrong. Google's JWT-bearer
//! grant, which no certified server offers, is checked against Google's own library (google-auth)
//! instead: its verifier and its client.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokenvault::account::SecretKind;

use crate::support::daemon::Daemon;
use crate::support::{TestVault, write_private};
use crate::support::{alert_lines, eventually};

const BASIC: (&str, &str) = ("conf-basic", "conf-basic-secret-0123456789");
const POST: (&str, &str) = ("conf-post", "conf-post-secret-0123456789");
const PUBLIC: &str = "public-app";

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// The certified provider, as a child process.
struct Certified {
    child: Child,
    issuer: String,
}

impl Certified {
    fn start() -> Certified {
        Certified::start_with(0, "", 3600)
    }

    /// On `port` (0: any), every client secret ending in `suffix`, access tokens living
    /// `access_ttl` seconds.
    fn start_with(port: u16, suffix: &str, access_ttl: u64) -> Certified {
        Certified::start_as(port, suffix, access_ttl, "alice")
    }

    /// … with `user` logging in and approving.
    fn start_as(port: u16, suffix: &str, access_ttl: u64, user: &str) -> Certified {
        let dir = conformance_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is missing: run `npm ci --prefix tests/conformance` (.ci/run does)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .arg(port.to_string())
            .arg(suffix)
            .env("ACCESS_TTL", access_ttl.to_string())
            .env("ACCOUNT", user)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node (.ci/run installs it)");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // Keep reading: node dies of EPIPE if it writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let started: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the certified provider did not start: {line:?}"));
        Certified {
            child,
            issuer: started["issuer"].as_str().unwrap().to_owned(),
        }
    }

    fn port(&self) -> u16 {
        self.issuer.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// GET on the provider, as curl sees it: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        curl(&[&format!("{}{path}", self.issuer)])
    }

    /// The user types the code on the verification page and approves.
    fn approve_device(&self, user_code: &str) {
        let (status, body) = self.get(&format!("/admin/approve-device?user_code={user_code}"));
        assert_eq!(status, 200, "{body}");
    }

    /// The user revokes the app's access at the provider.
    fn revoke_grants(&self) {
        let (status, body) = self.get("/admin/revoke-grants?account=alice");
        assert_eq!((status, body.trim() != "0"), (200, true), "{body}");
    }

    /// RFC 7662 introspection, as the resource server would ask: is `token` live?
    fn is_active(&self, token: &str) -> bool {
        let (status, body) = curl(&[
            "-u",
            &format!("{}:{}", BASIC.0, BASIC.1),
            "-d",
            &format!("token={token}"),
            &format!("{}/token/introspection", self.issuer),
        ]);
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        answer["active"] == true
    }

    /// A refresh request as any client could send it: (status, body).
    fn refresh_with(&self, client: (&str, &str), refresh_token: &str) -> (u16, String) {
        curl(&[
            "-u",
            &format!("{}:{}", client.0, client.1),
            "-d",
            &format!("grant_type=refresh_token&refresh_token={refresh_token}"),
            &format!("{}/token", self.issuer),
        ])
    }
}

impl Drop for Certified {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.parse().unwrap_or(0), body.to_owned())
}

/// A vault whose `$BROWSER` is a user who approves (curl with cookies, which the certified
/// provider's login and consent need).
fn vault() -> TestVault {
    let vault = TestVault::new(None);
    let browser = vault.root.path().join("cookie-browser.sh");
    std::fs::write(
        &browser,
        "#!/bin/sh\nexec curl -s -o /dev/null -L -b /dev/null --max-time 20 \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    vault
}

fn run(vault: &TestVault, args: &[&str]) -> crate::support::Run {
    let mut command = vault.command(args);
    command.env("BROWSER", vault.root.path().join("cookie-browser.sh"));
    vault.run_command(command, None)
}

fn secret_file(vault: &TestVault, secret: &str) -> String {
    let path = vault.root.path().join(format!("{secret}.txt"));
    write_private(&path, secret);
    path.to_str().unwrap().to_owned()
}

/// `add-account NAME --issuer … --client-id ID` with the client's secret file (or as a public
/// client) and `extra` arguments.
fn add_args(
    vault: &TestVault,
    server: &Certified,
    name: &str,
    client: (&str, Option<&str>),
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "add-account",
        name,
        "--issuer",
        &server.issuer,
        "--client-id",
        client.0,
        "--timeout",
        "30",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    match client.1 {
        Some(secret) => args.extend(["--client-secret-file".into(), secret_file(vault, secret)]),
        None => args.push("--public-client".into()),
    }
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args
}

fn add(
    vault: &TestVault,
    server: &Certified,
    name: &str,
    client: (&str, Option<&str>),
    extra: &[&str],
) -> crate::support::Run {
    let args = add_args(vault, server, name, client, extra);
    run(vault, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The usual start: a vault with account `mail` of the confidential basic client, scope
/// `openid email`.
fn vault_with_mail(server: &Certified) -> TestVault {
    let vault = vault();
    add(
        &vault,
        server,
        "mail",
        (BASIC.0, Some(BASIC.1)),
        &["--scope", "openid email"],
    )
    .ok();
    vault
}

fn token(vault: &TestVault, name: &str, extra: &[&str]) -> String {
    let run = run(vault, &[&["token", name, "--no-daemon"], extra].concat());
    run.ok();
    run.stdout.trim().to_owned()
}

#[test]
fn authorization_code_with_pkce_state_and_iss_for_basic_and_post_clients() {
    let server = Certified::start();
    let vault = vault();
    // Discovery advertises authorization_response_iss_parameter_supported: the redirect's iss
    // is required and checked; the loopback port is random (RFC 8252 §7.3).
    add(
        &vault,
        &server,
        "basic",
        (BASIC.0, Some(BASIC.1)),
        &["--scope", "openid email"],
    )
    .ok();
    add(
        &vault,
        &server,
        "post",
        (POST.0, Some(POST.1)),
        &["--client-auth", "post", "--scope", "openid email"],
    )
    .ok();
    add(
        &vault,
        &server,
        "public",
        (PUBLIC, None),
        &["--scope", "openid email"],
    )
    .ok();
    for name in ["basic", "post", "public"] {
        assert!(server.is_active(&token(&vault, name, &[])), "{name}");
        // A token that must outlive the cached one: a real refresh, with rotation.
        let before = vault.stored_secret(name, SecretKind::RefreshToken);
        let fresh = token(&vault, name, &["--min-valid", "7200"]);
        assert!(server.is_active(&fresh), "{name}");
        assert_ne!(
            vault.stored_secret(name, SecretKind::RefreshToken),
            before,
            "{name}: rotated"
        );
    }
    let store = vault.open_store();
    let endpoints = store.account("basic").unwrap().config.endpoints;
    assert!(endpoints.iss_required, "discovery promised iss");
    vault.assert_no_plaintext_on_disk();
}

/// Runs `add-account … --device`, plays the user who approves the code shown, and waits.
fn add_with_device(
    vault: &TestVault,
    server: &Certified,
    name: &str,
    client: (&str, Option<&str>),
) -> crate::support::Run {
    let args = add_args(
        vault,
        server,
        name,
        client,
        &["--device", "--scope", "openid email"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = vault
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut shown = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        shown.push_str(&line);
        if let Some(code) = line.split("the code:").nth(1) {
            server.approve_device(code.trim());
            break;
        }
    }
    let _ = stderr.read_to_string(&mut shown);
    let mut stdout = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut stdout);
    let status = child.wait().unwrap();
    crate::support::Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr: shown,
    }
}

#[test]
fn device_flow_with_a_confidential_and_a_public_client() {
    let server = Certified::start();
    let vault = vault();
    // RFC 8628 §3.1: the confidential client authenticates at the device endpoint too; a bare
    // client_id gets 401 invalid_client from this server.
    add_with_device(&vault, &server, "tv", (BASIC.0, Some(BASIC.1))).ok();
    add_with_device(&vault, &server, "kiosk", (PUBLIC, None)).ok();
    for name in ["tv", "kiosk"] {
        assert!(server.is_active(&token(&vault, name, &["--min-valid", "7200"])));
    }
}

#[test]
fn client_credentials_and_a_rotated_client_secret() {
    let server = Certified::start();
    let vault = vault();
    add(
        &vault,
        &server,
        "robot",
        (BASIC.0, Some(BASIC.1)),
        &["--client-credentials", "--scope", "api:read"],
    )
    .ok();
    assert!(server.is_active(&token(&vault, "robot", &[])));
    // A wrong secret is refused and nothing is stored.
    add(
        &vault,
        &server,
        "wrong",
        (BASIC.0, Some("not-the-secret")),
        &["--client-credentials", "--scope", "api:read"],
    )
    .fails_with(1, "invalid_client");
    // The administrator rotates the client's secret: the account is a client error, not a
    // dead grant.
    let port = server.port();
    drop(server);
    let _rotated = Certified::start_with(port, "-rotated", 3600);
    run(&vault, &["validate", "robot"]).fails_with(4, "invalid_client");
    let status = run(&vault, &["status", "robot"]);
    assert!(status.stdout.contains("client_error"), "{}", status.stdout);
}

#[test]
fn a_replayed_rotated_refresh_token_kills_the_grant_and_validation_finds_it_once() {
    let server = Certified::start();
    let vault = vault_with_mail(&server);
    let stale = vault.stored_secret("mail", SecretKind::RefreshToken);
    token(&vault, "mail", &["--min-valid", "7200"]);
    // Someone replays the refresh token the vault has already rotated away: the server treats
    // it as theft and revokes the whole grant, the vault's new refresh token included.
    let (status, body) = server.refresh_with(BASIC, &stale);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    let alerts = vault.root.path().join("alerts.log");
    std::fs::write(
        vault.dir.join("config.toml"),
        format!(
            "[alert]\ncommand = \"printf '%s|%s\\\\n' \\\"$VAULT_ACCOUNT\\\" \\\"$VAULT_EVENT\\\" >> {}\"\ndesktop = false\n[validation]\nschedule = \"*/2 * * * * *\"\n",
            alerts.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&vault, &[]);
    assert!(
        eventually(Duration::from_secs(10), || !alert_lines(&alerts).is_empty()),
        "no alert"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alert_lines(&alerts), ["mail|reauth_required"], "one alert");
    assert_eq!(daemon.get("/v1/token/mail").status, 409);
}

#[test]
fn a_grant_the_user_revoked_is_found_by_validation() {
    let server = Certified::start();
    let vault = vault_with_mail(&server);
    run(&vault, &["validate", "mail"]).ok();
    server.revoke_grants();
    run(&vault, &["validate", "mail"]).fails_with(3, "invalid_grant");
    run(&vault, &["token", "mail", "--no-daemon"]).fails_with(3, "vault login mail");
}

#[test]
fn the_daemon_hands_out_the_servers_live_tokens_and_refreshes_them_ahead() {
    // Access tokens living 20 s: the daemon refreshes ahead (with rotation) on its own.
    let server = Certified::start_with(0, "", 20);
    let vault = vault_with_mail(&server);
    let daemon = Daemon::start(&vault, &[]);
    let first = daemon.get("/v1/token/mail").json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(server.is_active(&first));
    let mut later = first.clone();
    assert!(
        eventually(Duration::from_secs(30), || {
            later = daemon.get("/v1/token/mail?min_valid=5").json()["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            later != first
        }),
        "never refreshed"
    );
    assert!(server.is_active(&later), "the refreshed token is live");
    let _ = server.get("/"); // still up
}

/// One server as the probes below see it.
struct Probed<'a> {
    token_url: String,
    auth_url: String,
    device_url: String,
    client: (&'a str, &'a str),
}

impl Probed<'_> {
    /// A token-endpoint request: its status and OAuth `error`.
    fn token(&self, auth: &[&str], form: &str) -> (u16, String) {
        let mut args: Vec<&str> = auth.to_vec();
        args.extend(["-d", form, &self.token_url]);
        let (status, body) = curl(&args);
        let error = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|answer| answer["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        (status, error)
    }

    fn basic(&self) -> String {
        format!("{}:{}", self.client.0, self.client.1)
    }

    /// An authorization request: refused outright, an error redirect (with or without `iss`),
    /// or on its way to login and consent.
    fn authorize(&self, redirect_uri: &str, pkce: &str) -> &'static str {
        let url = format!(
            "{}?response_type=code&client_id={}&redirect_uri={}&scope=openid&state=s{pkce}",
            self.auth_url,
            self.client.0,
            url::form_urlencoded::byte_serialize(redirect_uri.as_bytes()).collect::<String>()
        );
        let output = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                &url,
            ])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (status, location) = text.split_once(' ').unwrap_or(("0", ""));
        match (status.parse::<u16>().unwrap_or(0), location) {
            (400..=499, _) => "refused",
            (_, location) if location.contains("error=") && location.contains("iss=") => {
                "error redirect with iss"
            }
            (_, location) if location.contains("error=") => "error redirect without iss",
            _ => "proceeds",
        }
    }
}

const CHALLENGE: &str = "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// What the built-in provider imitates, asked of both servers with the same requests: where
/// they disagree, the built-in one is wrong (and was fixed: the device endpoint's client
/// authentication, `iss` on error redirects).
#[test]
fn the_built_in_provider_answers_like_the_certified_one() {
    let certified = Certified::start();
    let built_in = crate::support::fake_oauth::start(
        crate::support::fake_oauth::OfflineRule::OfflineAccessScope,
    );
    let servers = [
        Probed {
            token_url: format!("{}/token", certified.issuer),
            auth_url: format!("{}/auth", certified.issuer),
            device_url: format!("{}/device/auth", certified.issuer),
            client: BASIC,
        },
        Probed {
            token_url: built_in.token_url(),
            auth_url: built_in.auth_url(),
            device_url: built_in.device_url(),
            client: (
                crate::support::fake_oauth::CLIENT_ID,
                crate::support::fake_oauth::CLIENT_SECRET,
            ),
        },
    ];
    let verdicts: Vec<Vec<String>> = servers
        .iter()
        .map(|server| {
            let wrong = format!("{}:wrong-secret", server.client.0);
            let both_ways = format!("client_id={}&client_secret={}", server.client.0, server.client.1);
            let device_bare = format!("client_id={}&scope=openid", server.client.0);
            let (status, error) = curl(&["-d", &device_bare, &server.device_url]);
            let device_error = serde_json::from_str::<serde_json::Value>(&error)
                .ok()
                .and_then(|answer| answer["error"].as_str().map(str::to_owned))
                .unwrap_or_default();
            [
                format!("{:?}", server.token(&["-u", &wrong], "grant_type=refresh_token&refresh_token=x")),
                format!("{:?}", server.token(&["-u", &server.basic()], "grant_type=refresh_token&refresh_token=unknown")),
                format!("{:?}", server.token(&["-u", &server.basic()], &format!("grant_type=refresh_token&refresh_token=x&{both_ways}"))),
                format!("{:?}", server.token(&["-u", &server.basic()], "grant_type=authorization_code&code=forged&redirect_uri=http://127.0.0.1:1/&code_verifier=v")),
                format!("device, confidential client without authentication: {:?}", (status, device_error)),
                format!("no trailing slash: {}", server.authorize("http://127.0.0.1:5555", CHALLENGE)),
                format!("another host: {}", server.authorize("http://evil.example:5555/", CHALLENGE)),
                format!("any loopback port: {}", server.authorize("http://127.0.0.1:5555/", &format!("{CHALLENGE}&code_challenge_method=S256"))),
                format!("plain PKCE: {}", server.authorize("http://127.0.0.1:5555/", &format!("{CHALLENGE}&code_challenge_method=plain"))),
                format!("no PKCE: {}", server.authorize("http://127.0.0.1:5555/", "")),
            ]
            .to_vec()
        })
        .collect();
    for (certified, built_in) in verdicts[0].iter().zip(&verdicts[1]) {
        assert_eq!(built_in, certified, "the built-in provider differs");
    }
}

#[test]
fn remove_revokes_the_grant_at_the_provider_unless_told_to_keep_it() {
    let server = Certified::start();
    let vault = vault();
    for name in ["gone", "kept", "offline"] {
        add(
            &vault,
            &server,
            name,
            (BASIC.0, Some(BASIC.1)),
            &["--scope", "openid email"],
        )
        .ok();
    }
    let gone = vault.stored_secret("gone", SecretKind::RefreshToken);
    let kept = vault.stored_secret("kept", SecretKind::RefreshToken);
    assert!(server.is_active(&gone) && server.is_active(&kept));
    let removed = run(&vault, &["remove", "gone"]);
    removed.ok();
    assert!(
        removed.stdout.contains("The provider revoked its grant"),
        "{}",
        removed.stdout
    );
    assert!(!server.is_active(&gone), "the refresh token still works");
    run(&vault, &["remove", "kept", "--keep-grant"]).ok();
    assert!(server.is_active(&kept), "--keep-grant revoked it");
    // The provider unreachable: said so, and the account is removed here all the same.
    drop(server);
    let removed = run(&vault, &["remove", "offline"]);
    removed.ok();
    assert!(
        removed.stderr.contains("could not be revoked"),
        "{}",
        removed.stderr
    );
    assert!(!run(&vault, &["list"]).stdout.contains("offline"));
}

#[test]
fn a_login_by_another_user_is_refused_unless_allowed() {
    let server = Certified::start();
    let vault = vault_with_mail(&server);
    let shown = run(&vault, &["status", "mail"]);
    assert!(
        shown.stdout.contains("signed in as     alice@example.com"),
        "{}",
        shown.stdout
    );
    let before = vault.stored_secret("mail", SecretKind::RefreshToken);
    // The same provider, but the browser is signed in as bob.
    let port = server.port();
    drop(server);
    let server = Certified::start_as(port, "", 3600, "bob");
    run(&vault, &["login", "mail", "--timeout", "30"]).fails_with(
        1,
        "the login was by bob@example.com, but the account belongs to alice@example.com",
    );
    assert_eq!(
        vault.stored_secret("mail", SecretKind::RefreshToken),
        before,
        "nothing was changed"
    );
    run(
        &vault,
        &[
            "login",
            "mail",
            "--timeout",
            "30",
            "--allow-different-identity",
        ],
    )
    .ok();
    let shown = run(&vault, &["status", "mail"]);
    assert!(
        shown.stdout.contains("signed in as     bob@example.com"),
        "{}",
        shown.stdout
    );
    assert!(server.is_active(&token(&vault, "mail", &["--min-valid", "7200"])));
    // Bob again: the same user, accepted without a flag.
    run(&vault, &["login", "mail", "--timeout", "30"]).ok();
}

/// What the client-secret fallback rests on: a server authenticates the client before it looks
/// at the grant (RFC 6749 §5.2), so a refresh refused for its secret spends no refresh token —
/// even on a server that rotates them and kills the grant on reuse.
#[test]
fn a_refresh_refused_for_its_client_secret_spends_nothing_and_the_previous_secret_carries_on() {
    let server = Certified::start();
    let vault = vault_with_mail(&server);
    let refresh = vault.stored_secret("mail", SecretKind::RefreshToken);
    let (status, body) = server.refresh_with((BASIC.0, "not-the-secret"), &refresh);
    assert!(
        status == 401 && body.contains("invalid_client"),
        "{status} {body}"
    );
    assert!(
        server.is_active(&refresh),
        "the refused request spent the refresh token"
    );

    // The vault's own fallback against it: the new secret is refused, the previous one refreshes.
    let wrong = secret_file(&vault, "a-mistyped-new-secret");
    run(
        &vault,
        &["set-client-secret", "mail", "--client-secret-file", &wrong],
    )
    .fails_with(4, "refused the new client secret");
    let validated = run(&vault, &["validate", "mail"]);
    validated.ok();
    assert!(
        validated.stdout.contains("with the previous client secret"),
        "{}",
        validated.stdout
    );
    assert!(server.is_active(&token(&vault, "mail", &[])));
}

/// `vault doctor` compares this clock with the provider's `Date` header: the certified server
/// sends one (RFC 9110 §6.6.1), and its clock is this machine's.
#[test]
fn doctor_reads_the_certified_servers_clock() {
    let server = Certified::start();
    let vault = vault_with_mail(&server);
    let found = run(&vault, &["doctor"]);
    let origin = server.issuer.trim_end_matches('/');
    assert!(
        found
            .stdout
            .contains(&format!("this clock agrees with {origin}")),
        "{}",
        found.stdout
    );
}

/// Google's JWT-bearer grant has no certified server to run: its counterpart here is Google's own
/// library, google-auth — its verifier behind a token endpoint (tests/conformance/
/// google_jwt_bearer.py) and its client.
struct GoogleVerifier {
    child: Child,
    token_url: String,
}

impl GoogleVerifier {
    fn start() -> GoogleVerifier {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut child = Command::new("python3")
            .arg(conformance_dir().join("google_jwt_bearer.py"))
            .arg(fixtures.join("service-account.crt"))
            .arg(SERVICE_ACCOUNT)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (.ci/run installs google-auth)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let started: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("google_jwt_bearer.py did not start: {line:?}"));
        GoogleVerifier {
            child,
            token_url: started["token_url"].as_str().unwrap().to_owned(),
        }
    }
}

impl Drop for GoogleVerifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SERVICE_ACCOUNT: &str = "robot@tokenvault-tests.iam.gserviceaccount.com";
const FIXTURE_KEY: &str = include_str!("../fixtures/service-account.json");

/// The fixture's key file with its `token_uri` set, written into `vault`.
fn key_file_for(vault: &TestVault, token_url: &str) -> PathBuf {
    let path = vault.root.path().join("google-sa.json");
    write_private(&path, &FIXTURE_KEY.replace("TOKEN_URI", token_url));
    path
}

#[test]
fn the_vaults_service_account_assertions_pass_googles_own_verifier() {
    let google = GoogleVerifier::start();
    let vault = TestVault::new(None);
    let key = key_file_for(&vault, &google.token_url);
    let add = vault.run(&[
        "add-account",
        "robot",
        "--service-account",
        key.to_str().unwrap(),
        "--scope",
        "https://www.googleapis.com/auth/drive.readonly",
        "--subject",
        "admin@example.com",
    ]);
    add.ok();
    let token = vault.run(&["token", "robot", "--no-daemon", "--min-valid", "3000"]);
    assert!(
        token.ok().stdout.starts_with("verified-by-google-auth."),
        "{}",
        token.stdout
    );
}

#[test]
fn googles_own_client_gets_a_token_from_the_built_in_jwt_bearer_endpoint() {
    let built_in =
        crate::support::fake_oauth::start(crate::support::fake_oauth::OfflineRule::Google);
    crate::support::fake_oauth::trust_fixture_service_account(&built_in);
    let script = "import json, sys\n\
                  from google.oauth2 import service_account\n\
                  import google.auth.transport.requests as r\n\
                  info = json.loads(sys.stdin.read())\n\
                  for subject in (None, 'admin@example.com'):\n\
                  \x20   creds = service_account.Credentials.from_service_account_info(info, \
                          scopes=['https://www.googleapis.com/auth/drive.readonly'], subject=subject)\n\
                  \x20   creds.refresh(r.Request())\n\
                  \x20   print(creds.token, creds.expiry.isoformat())\n";
    let mut python = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with google-auth (.ci/run installs it)");
    std::io::Write::write_all(
        &mut python.stdin.take().unwrap(),
        FIXTURE_KEY
            .replace("TOKEN_URI", &built_in.token_url())
            .as_bytes(),
    )
    .unwrap();
    let output = python.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "google-auth was refused: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tokens: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split(' ').next())
        .collect();
    assert_eq!(tokens.len(), 2, "{stdout}");
    assert!(
        tokens.iter().all(|token| built_in.is_access_token(token)),
        "{stdout}"
    );
}

/// The same assertions, good and bad, to Google's verifier and to the built-in provider: they
/// must accept and refuse alike.
#[test]
fn the_built_in_jwt_bearer_endpoint_refuses_what_googles_verifier_refuses() {
    let google = GoogleVerifier::start();
    let built_in =
        crate::support::fake_oauth::start(crate::support::fake_oauth::OfflineRule::Google);
    crate::support::fake_oauth::trust_fixture_service_account(&built_in);
    let fixture: serde_json::Value = serde_json::from_str(FIXTURE_KEY).unwrap();
    let own_key = fixture["private_key"].as_str().unwrap().to_owned();
    let spare_keys = include_str!("../fixtures/spare-rsa-keys.pem");
    let another_key = spare_keys
        .split_inclusive("-----END PRIVATE KEY-----\n")
        .next()
        .unwrap();
    let now = tokenvault::clock::now_unix();
    let cases = |token_url: &str| -> Vec<(&'static str, String)> {
        let claims = |iss: &str, aud: &str, iat: i64, exp: i64| {
            serde_json::json!({
                "iss": iss, "aud": aud, "iat": iat, "exp": exp,
                "scope": "https://www.googleapis.com/auth/drive.readonly",
            })
        };
        let good = claims(SERVICE_ACCOUNT, token_url, now, now + 3600);
        let rs256 = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        vec![
            ("good", sign_rs256(&rs256, &good, &own_key)),
            (
                "issued 30 s ahead",
                sign_rs256(
                    &rs256,
                    &claims(SERVICE_ACCOUNT, token_url, now + 30, now + 3630),
                    &own_key,
                ),
            ),
            (
                "signed by another key",
                sign_rs256(&rs256, &good, another_key),
            ),
            (
                "for Google's documented audience",
                sign_rs256(
                    &rs256,
                    &claims(
                        SERVICE_ACCOUNT,
                        "https://oauth2.googleapis.com/token",
                        now,
                        now + 3600,
                    ),
                    &own_key,
                ),
            ),
            (
                "for another audience",
                sign_rs256(
                    &rs256,
                    &claims(
                        SERVICE_ACCOUNT,
                        "https://login.microsoftonline.com/common/oauth2/v2.0/token",
                        now,
                        now + 3600,
                    ),
                    &own_key,
                ),
            ),
            (
                "expired",
                sign_rs256(
                    &rs256,
                    &claims(SERVICE_ACCOUNT, token_url, now - 7200, now - 3600),
                    &own_key,
                ),
            ),
            (
                "issued in 5 minutes",
                sign_rs256(
                    &rs256,
                    &claims(SERVICE_ACCOUNT, token_url, now + 300, now + 3900),
                    &own_key,
                ),
            ),
            (
                "two hours long",
                sign_rs256(
                    &rs256,
                    &claims(SERVICE_ACCOUNT, token_url, now, now + 7200),
                    &own_key,
                ),
            ),
            (
                "another service account",
                sign_rs256(
                    &rs256,
                    &claims(
                        "other@tokenvault-tests.iam.gserviceaccount.com",
                        token_url,
                        now,
                        now + 3600,
                    ),
                    &own_key,
                ),
            ),
            (
                "unsigned",
                format!(
                    "{}.{}.",
                    b64_json(&serde_json::json!({"alg": "none"})),
                    b64_json(&good)
                ),
            ),
            (
                "HMAC keyed with the certificate",
                sign_hs256(&good, include_str!("../fixtures/service-account.crt")),
            ),
            ("malformed", "a.b".to_owned()),
        ]
    };
    let verdict = |token_url: &str, assertion: &str| -> String {
        let (status, body) = curl(&[
            "--data-urlencode",
            "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer",
            "--data-urlencode",
            &format!("assertion={assertion}"),
            token_url,
        ]);
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        match status {
            200 if answer["access_token"].is_string() => "accepted".to_owned(),
            _ => format!("{status} {}", answer["error"].as_str().unwrap_or("?")),
        }
    };
    let by_google = cases(&google.token_url);
    let by_built_in = cases(&built_in.token_url());
    let mut agreed = 0;
    for ((case, to_google), (_, to_built_in)) in by_google.iter().zip(&by_built_in) {
        let google_says = verdict(&google.token_url, to_google);
        let built_in_says = verdict(&built_in.token_url(), to_built_in);
        assert_eq!(
            built_in_says, google_says,
            "{case}: the built-in provider differs"
        );
        agreed += 1;
    }
    assert_eq!(verdict(&google.token_url, &by_google[0].1), "accepted");
    assert_eq!(agreed, by_google.len());
}

fn b64_json(value: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn sign_rs256(header: &serde_json::Value, claims: &serde_json::Value, pem: &str) -> String {
    use base64::Engine;
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    let signed = format!("{}.{}", b64_json(header), b64_json(claims));
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!(
        "{signed}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
    )
}

/// The algorithm-confusion forgery: HS256 "signed" with the public certificate as the secret.
fn sign_hs256(claims: &serde_json::Value, secret: &str) -> String {
    use base64::Engine;
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
    let signed = format!("{}.{}", b64_json(&header), b64_json(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, signed.as_bytes());
    format!(
        "{signed}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}
