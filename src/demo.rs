//! `vault demo`: the whole token lifecycle in one command, with nothing set up and no network.
//! A throwaway vault, the built-in provider (`devprovider`), a real authorization-code login,
//! the daemon on a temporary socket, refresh ahead, a revocation caught by validation and
//! alerted, and the 409 an app then gets.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::account::SecretKind;
use crate::daemon::{self, ServeOptions};
use crate::devprovider::{self, DevProvider, OfflineRule};
use crate::enroll::{self, BrowserOptions, Flow, NewAccount, NewCredentials};
use crate::error::{Error, Problem};
use crate::keys::KeySource;
use crate::oauth::provider::{EndpointOverrides, ProviderChoice};
use crate::oauth::{Client, ClientAuth};
use crate::secret::SecretString;
use crate::store::{AnyStore, Store};

const ACCOUNT: &str = "demo-mail";
/// Short-lived access tokens, so that refresh ahead is visible within seconds.
const TOKEN_LIFETIME: u64 = 20;
const WATCH_FOR: Duration = Duration::from_secs(24);

/// Prints numbered steps with the time since the start.
struct Steps {
    started: Instant,
    number: u32,
}

impl Steps {
    fn step(&mut self, text: &str) {
        self.number += 1;
        println!(
            "\n[{:>5.1} s] {}. {text}",
            self.started.elapsed().as_secs_f64(),
            self.number
        );
    }

    fn detail(&self, text: &str) {
        println!("          {text}");
    }
}

/// Runs the demo; removes its directory afterwards unless `keep`. Ctrl-C cleans up too.
pub fn run(keep: bool) -> Result<(), Error> {
    let work = work_dir()?;
    let result = run_in(&work);
    if keep {
        println!(
            "\nKept {} (vault, key file, audit log). Remove it when done.",
            work.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

fn work_dir() -> Result<PathBuf, Error> {
    let suffix = crate::crypto::random_bytes::<6>()
        .map_err(|err| Error::Internal(err.to_string()))?
        .expose()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let dir = std::env::temp_dir().join(format!("tokenvault-demo-{suffix}"));
    crate::files::create_private_dir(&dir)
        .map_err(|err| Error::Input(format!("cannot create {}: {err}", dir.display())))?;
    Ok(dir)
}

fn run_in(work: &Path) -> Result<(), Error> {
    let mut steps = Steps {
        started: Instant::now(),
        number: 0,
    };
    println!(
        "tokenvault demo — the whole token lifecycle on this machine, no network, nothing to set up."
    );

    let vault_dir = work.join("vault");
    let key_file = work.join("master.key");
    let store = Store::init(&vault_dir, KeySource::File(key_file.clone()), None)?;
    std::fs::write(vault_dir.join(crate::config::CONFIG_FILE), demo_config())
        .map_err(|err| Error::Input(format!("cannot write the demo's config: {err}")))?;
    steps.step("Created a throwaway vault (SQLite, every secret sealed with AES-256-GCM)");
    steps.detail(&format!(
        "vault: {}   master key: {} (0600)",
        vault_dir.display(),
        key_file.display()
    ));

    let provider = DevProvider::start(OfflineRule::OfflineAccessScope)
        .map_err(|err| Error::Internal(format!("cannot start the built-in provider: {err}")))?;
    provider.configure(|behaviour| {
        behaviour.rotate = true;
        behaviour.access_lifetime = TOKEN_LIFETIME;
    });
    steps.step(
        "Started a built-in OAuth 2.0 provider on 127.0.0.1 (the same one the test suite uses)",
    );
    steps.detail(&format!(
        "{}: PKCE S256 required, refresh tokens rotate on every use, {TOKEN_LIFETIME} s access tokens",
        provider.base
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Internal(format!("cannot start the async runtime: {err}")))?;
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = lifecycle(&mut steps, store, &provider, work, &vault_dir, &key_file) => outcome,
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

/// Validation every 5 s so the demo catches the revocation quickly; alerts print a line.
fn demo_config() -> String {
    "[validation]\nschedule = \"*/5 * * * * *\"\n\n[alert]\ndesktop = false\ncommand = 'printf \"          ALERT  %s: %s (sent once, not per retry)\\n\" \"$VAULT_ACCOUNT\" \"$VAULT_EVENT\"'\n".to_owned()
}

async fn lifecycle(
    steps: &mut Steps,
    store: Store,
    provider: &DevProvider,
    work: &Path,
    vault_dir: &Path,
    key_file: &Path,
) -> Result<(), Error> {
    let http = crate::oauth::token::http_client();
    steps.step(&format!(
        "vault add-account {ACCOUNT} --issuer {} --client-id … (browser login)",
        provider.base
    ));
    let new = NewAccount {
        name: ACCOUNT.to_owned(),
        scopes: vec!["openid".into(), "email".into()],
        credentials: NewCredentials::OAuth {
            provider: ProviderChoice::Issuer(provider.base.clone()),
            overrides: EndpointOverrides::default(),
            client: Client {
                id: devprovider::CLIENT_ID.to_owned(),
                secret: Some(SecretString::from(devprovider::CLIENT_SECRET.to_owned())),
                auth: ClientAuth::Basic,
            },
            flow: Flow::Browser(BrowserOptions {
                redirect_port: 0,
                timeout: Duration::from_secs(30),
                opener: approve_consent,
            }),
        },
    };
    let mut vault = AnyStore::Local(store);
    let added = enroll::add_account(&mut vault, &http, new).await?;
    let AnyStore::Local(store) = vault else {
        return Err(Error::Internal("the demo's vault changed kind".into()));
    };
    steps.detail(
        "the provider answered with an access token and a refresh token; the refresh token and",
    );
    steps.detail(&format!(
        "the client secret are sealed in the vault ({} sealed secrets, no plaintext)",
        sealed_count(&store, &added.account)?
    ));

    let socket = work.join("vault.sock");
    steps.step(
        "vault serve: the daemon hands out access tokens over a Unix socket (0600, SO_PEERCRED)",
    );
    steps.detail(&format!(
        "try it from another terminal:  curl --unix-socket {} http://localhost/v1/token/{ACCOUNT}",
        socket.display()
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions {
        socket: socket.clone(),
        socket_group: None,
        metadata: None,
        metrics: None,
    };
    let daemon = tokio::spawn(daemon::serve(
        AnyStore::Local(store),
        options,
        |_, _| {},
        async {
            let _ = stopped.await;
        },
    ));
    wait_for_socket(&socket).await;

    steps.step("An app asks for a token the way apps do (GET /v1/token/NAME), and gets only the access token");
    let first = ask(&socket).await?;
    steps.detail(&format!(
        "{}   (no refresh token, no client secret: ever)",
        first.describe()
    ));

    steps.step(&format!(
        "Watching refresh ahead for {} s: tokens are replaced before they expire",
        WATCH_FOR.as_secs()
    ));
    let rotations_before = provider.counters(|counters| counters.refresh_grants);
    let watch_until = Instant::now() + WATCH_FOR;
    let mut last_token = first.token_suffix.clone();
    while Instant::now() < watch_until {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let answer = ask(&socket).await?;
        let marker = if answer.token_suffix != last_token {
            "  ← new token (refreshed ahead, refresh token rotated)"
        } else {
            ""
        };
        steps.detail(&format!("{}{marker}", answer.describe()));
        last_token = answer.token_suffix;
    }
    let rotations = provider.counters(|counters| counters.refresh_grants) - rotations_before;
    steps.detail(&format!("{rotations} refreshes, each rotating the refresh token and committing it before anyone saw the new access token"));

    steps.step("The user revokes the app's access at the provider");
    provider.revoke_all();
    steps.detail(
        "scheduled validation (every 5 s here; every 6 h by default) will prove the grant dead",
    );
    let refused = wait_for_refusal(&socket).await?;
    steps.step("Caught by validation before any app needed a token");
    let status = Store::open(
        vault_dir,
        &crate::keys::Unlock {
            source: Some(KeySource::File(key_file.to_owned())),
            passphrase_file: None,
        },
    )?
    .account(ACCOUNT)?;
    steps.detail(&format!(
        "vault status {ACCOUNT}: state {}",
        status.state.as_str()
    ));
    steps.detail(&format!(
        "an app asking now gets 409: {}",
        refused.chars().take(150).collect::<String>() + "…"
    ));
    if let Some((_, next)) = refused.rsplit_once("Next: ") {
        steps.detail(&format!("the answer names the fix: {next}"));
    }

    let _ = stop.send(());
    let _ = daemon.await;
    println!(
        "\nWhat just happened: every long-lived secret stayed sealed in the vault; apps got short-lived"
    );
    println!(
        "access tokens over a socket checked against their uid; tokens were refreshed ahead of expiry with"
    );
    println!(
        "rotation handled; a revocation was found by validation and alerted once, with the fix named."
    );
    println!("\nDo this for Gmail next (README.md, \"Walkthrough: Gmail\"):");
    println!("  vault init");
    println!(
        "  vault add-account work-gmail --provider google --client-id ID.apps.googleusercontent.com \\"
    );
    println!("      --client-secret-file ~/gmail-secret --scope https://mail.google.com/");
    println!("  vault serve &   then in ~/.msmtprc:  passwordeval \"vault token work-gmail\"");
    Ok(())
}

/// Plays the user who clicks "Allow": follows the authorization URL and its redirect back.
fn approve_consent(url: &str) {
    println!("          consent: the authorization URL was opened and approved automatically");
    let url = url.to_owned();
    tokio::spawn(async move {
        let browser = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap_or_default();
        let _ = browser.get(url).send().await;
    });
}

fn sealed_count(store: &Store, account: &crate::account::Account) -> Result<usize, Error> {
    let mut count = 0;
    for kind in [
        SecretKind::RefreshToken,
        SecretKind::ClientSecret,
        SecretKind::AccessToken,
    ] {
        count += usize::from(store.secret(account, kind)?.is_some());
    }
    Ok(count)
}

async fn wait_for_socket(socket: &Path) {
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What an app saw: only a suffix of the token is shown.
struct Seen {
    token_suffix: String,
    expires_in: i64,
    waited: Duration,
}

impl Seen {
    fn describe(&self) -> String {
        format!(
            "token …{}  expires in {:>2} s  answered in {} µs",
            self.token_suffix,
            self.expires_in,
            self.waited.as_micros()
        )
    }
}

async fn ask(socket: &Path) -> Result<Seen, Error> {
    let socket = socket.to_owned();
    let asked = Instant::now();
    let reply =
        tokio::task::spawn_blocking(move || crate::client::request_token(&socket, ACCOUNT, 1))
            .await
            .map_err(|err| Error::Internal(err.to_string()))??
            .ok_or_else(|| Error::Internal("the daemon went away".into()))?;
    let token = reply.0.access_token.expose();
    Ok(Seen {
        token_suffix: token
            .chars()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect(),
        expires_in: reply.0.expires_in,
        waited: asked.elapsed(),
    })
}

/// Asks until the daemon refuses with `reauth_required`; returns its message.
async fn wait_for_refusal(socket: &Path) -> Result<String, Error> {
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match ask(socket).await {
            Err(Error::Daemon {
                problem: Problem::ReauthRequired,
                message,
            }) => {
                return Ok(message);
            }
            Err(other) => return Err(other),
            Ok(_) => {}
        }
    }
    Err(Error::Internal(
        "validation did not catch the revocation in 30 s".into(),
    ))
}
