//! End-to-end tests: the real `vault` binary, a real SQLite vault, real HTTP to a fake OAuth
//! server on 127.0.0.1.

mod attacks;
mod conformance;
mod crash;
mod daemon;
mod daemon_support;
mod demo;
mod ecosystem;
mod errors;
mod fake_forge;
mod fake_mail;
mod fake_oauth;
mod flows;
mod hostile_provider;
mod keyring;
mod lifecycle;
mod mail;
mod security;
mod support;

use std::path::PathBuf;

use fake_oauth::{CLIENT_ID, CLIENT_SECRET, FakeOAuth};
use support::{Run, TestVault, write_private};

/// Writes the client secret to a 0600 file and returns its path.
fn client_secret_file(vault: &TestVault) -> PathBuf {
    let path = vault.root.path().join("client-secret.txt");
    write_private(&path, &format!("{CLIENT_SECRET}\n"));
    path
}

/// `add-account NAME` through the browser flow with OIDC discovery (offline_access +
/// prompt=consent) and a confidential client, plus `extra` arguments.
fn browser_add_args(
    vault: &TestVault,
    fake: &FakeOAuth,
    name: &str,
    extra: &[&str],
) -> Vec<String> {
    let secret = client_secret_file(vault);
    let base = [
        "add-account",
        name,
        "--issuer",
        &fake.base,
        "--client-id",
        CLIENT_ID,
        "--client-secret-file",
        secret.to_str().unwrap(),
        "--scope",
        "openid email",
    ];
    base.iter()
        .chain(extra)
        .map(|arg| arg.to_string())
        .collect()
}

/// The usual start: the provider, a new vault, and account `name` added through the browser.
fn vault_with_account(name: &str) -> (FakeOAuth, TestVault) {
    let fake = fake_oauth::start(fake_oauth::OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, name).ok();
    (fake, vault)
}

fn add_with_browser(vault: &TestVault, fake: &FakeOAuth, name: &str) -> Run {
    let args = browser_add_args(vault, fake, name, &["--timeout", "30"]);
    vault.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The service-account fixture, pointed at `fake` (which is told to trust it), written to a file.
fn service_account_key_file(vault: &TestVault, fake: &FakeOAuth) -> PathBuf {
    fake_oauth::trust_fixture_service_account(fake);
    let key =
        include_str!("../fixtures/service-account.json").replace("TOKEN_URI", &fake.token_url());
    let path = vault.root.path().join("sa.json");
    std::fs::write(&path, key).unwrap();
    path
}

/// The access token `vault token` prints, checked to be one the server issued.
fn token(vault: &TestVault, fake: &FakeOAuth, args: &[&str]) -> String {
    let run = vault.run(&[&["token"], args].concat());
    run.ok();
    let token = run.stdout.trim().to_owned();
    assert!(
        fake.is_access_token(&token),
        "not an issued token: {token:?}"
    );
    token
}
