//! The mail recipes in README, run with the real programs against the fake SMTP/IMAP servers:
//! msmtp (`passwordeval`), git send-email (through msmtp) and mbsync (`PassCmd`) log in with
//! XOAUTH2 or OAUTHBEARER using the access token `vault token` printed.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::ecosystem::have;
use crate::support::add_with_browser;
use crate::support::daemon::Daemon;
use crate::support::fake_mail::{self, FakeMail, Protocol};
use crate::support::fake_oauth::{FakeOAuth, OfflineRule};
use crate::support::{TestVault, run_with_input};

/// A vault with the account `mail` and its daemon, the way a user runs it.
fn mail_vault(fake: &FakeOAuth) -> (TestVault, Daemon) {
    let vault = TestVault::new(Some(fake));
    add_with_browser(&vault, fake, "mail").ok();
    let daemon = Daemon::start(&vault, &[]);
    (vault, daemon)
}

/// Where msmtp sends: Gmail as in README, or the local fake server (no TLS on loopback).
enum SmtpServer {
    Gmail,
    Local(u16),
}

/// README's msmtp account for `account`, with `auth` (oauthbearer or xoauth2).
fn msmtp_config(vault: &TestVault, account: &str, server: SmtpServer, auth: &str) -> PathBuf {
    let endpoint = match server {
        SmtpServer::Gmail => "host smtp.gmail.com\nport 587\ntls on".to_owned(),
        SmtpServer::Local(port) => format!("host 127.0.0.1\nport {port}\ntls off"),
    };
    let config = format!(
        "account gmail\n{endpoint}\nauth {auth}\nuser me@example.com\nfrom me@example.com\npasswordeval \"{} token {account}\"\naccount default : gmail\n",
        env!("CARGO_BIN_EXE_vault")
    );
    let path = vault.root.path().join(format!("msmtprc-{account}-{auth}"));
    crate::support::write_private(&path, &config);
    path
}

fn assert_ran(output: &Output) {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every bearer the server saw was issued by the provider, and there were `logins` of them.
fn assert_logged_in_with_vault_tokens(server: &FakeMail, fake: &FakeOAuth, logins: usize) {
    server.seen(|seen| {
        assert_eq!(seen.logins, logins, "bearers seen: {}", seen.bearers.len());
        assert!(seen.bearers.iter().all(|token| fake.is_access_token(token)));
    });
}

#[test]
fn msmtp_parses_the_readme_recipe_and_runs_passwordeval() {
    assert!(have("msmtp"), "msmtp is missing (.ci/run installs it)");
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let (vault, _daemon) = mail_vault(&fake);
    let pretend = |config: &Path| {
        let mut msmtp = vault.program("msmtp");
        msmtp
            .arg(format!("--file={}", config.display()))
            .arg("--pretend");
        msmtp.output().unwrap()
    };
    // --pretend parses the configuration and runs passwordeval, without sending anything.
    let output = pretend(&msmtp_config(
        &vault,
        "mail",
        SmtpServer::Gmail,
        "oauthbearer",
    ));
    assert_ran(&output);
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        shown.contains("auth = OAUTHBEARER") && shown.contains("password = *"),
        "{shown}"
    );
}

#[test]
fn msmtp_sends_with_the_vaults_token_over_xoauth2_and_oauthbearer() {
    assert!(have("msmtp"), "msmtp is missing (.ci/run installs it)");
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let (vault, _daemon) = mail_vault(&fake);
    let server = fake_mail::start(Protocol::Smtp, &fake);
    for auth in ["xoauth2", "oauthbearer"] {
        let config = msmtp_config(&vault, "mail", SmtpServer::Local(server.port), auth);
        let mut msmtp = vault.program("msmtp");
        msmtp
            .arg(format!("--file={}", config.display()))
            .arg("you@example.com");
        assert_ran(&run_with_input(msmtp, "Subject: hello\n\nsent by msmtp\n"));
    }
    assert_logged_in_with_vault_tokens(&server, &fake, 2);
    server.seen(|seen| assert_eq!(seen.messages.len(), 2));

    // When vault cannot give a token, msmtp stops instead of sending with a wrong password.
    let config = msmtp_config(
        &vault,
        "no-such-account",
        SmtpServer::Local(server.port),
        "xoauth2",
    );
    let mut msmtp = vault.program("msmtp");
    msmtp
        .arg(format!("--file={}", config.display()))
        .arg("you@example.com");
    let output = run_with_input(msmtp, "Subject: lost\n\nnever sent\n");
    assert!(!output.status.success());
    server.seen(|seen| assert_eq!(seen.messages.len(), 2));
}

#[test]
fn git_send_email_sends_a_patch_through_msmtp() {
    assert!(have("msmtp"), "msmtp is missing (.ci/run installs it)");
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let (vault, _daemon) = mail_vault(&fake);
    let server = fake_mail::start(Protocol::Smtp, &fake);
    let config = msmtp_config(&vault, "mail", SmtpServer::Local(server.port), "xoauth2");
    let repo = vault.root.path().join("repo");
    let git = |args: &[&str]| {
        let mut git = vault.program("git");
        git.current_dir(&repo)
            .args(["-c", "user.name=Test", "-c", "user.email=me@example.com"])
            .args(args);
        git.output().unwrap()
    };
    std::fs::create_dir_all(&repo).unwrap();
    assert_ran(&git(&["init", "--quiet"]));
    assert_ran(&git(&[
        "commit",
        "--quiet",
        "--allow-empty",
        "-m",
        "a change",
    ]));
    assert_ran(&git(&["format-patch", "-1", "--quiet", "-o", "patches"]));
    // README's recipe: git send-email hands the mail to msmtp, which logs in with the token.
    let sendmail = format!("sendemail.sendmailCmd=msmtp --file={}", config.display());
    let output = git(&[
        "-c",
        &sendmail,
        "send-email",
        "--to=you@example.com",
        "--from=me@example.com",
        "--confirm=never",
        "--quiet",
        "patches/0001-a-change.patch",
    ]);
    assert_ran(&output);
    assert_logged_in_with_vault_tokens(&server, &fake, 1);
    server.seen(|seen| {
        assert_eq!(seen.messages.len(), 1);
        assert!(
            seen.messages[0].contains("[PATCH] a change"),
            "{}",
            seen.messages[0]
        );
    });
}

/// README's mbsync recipe for `account`, pointed at the local fake IMAP server.
fn mbsync_config(vault: &TestVault, account: &str, port: u16) -> PathBuf {
    let mail = vault.root.path().join(format!("maildir-{account}"));
    std::fs::create_dir_all(&mail).unwrap();
    let config = format!(
        "IMAPAccount gmail\nHost 127.0.0.1\nPort {port}\nSSLType None\nUser me@example.com\nAuthMechs XOAUTH2\nPassCmd \"{vault} token {account}\"\n\nIMAPStore gmail-remote\nAccount gmail\n\nMaildirStore gmail-local\nPath {mail}/\nInbox {mail}/INBOX\n\nChannel gmail\nFar :gmail-remote:\nNear :gmail-local:\nPatterns *\n",
        vault = env!("CARGO_BIN_EXE_vault"),
        mail = mail.display()
    );
    let path = vault.root.path().join(format!("mbsyncrc-{account}"));
    crate::support::write_private(&path, &config);
    path
}

#[test]
fn mbsync_logs_in_with_xoauth2_from_vault_token() {
    assert!(
        have("mbsync"),
        "mbsync is missing (.ci/run installs isync and the XOAUTH2 SASL plugin)"
    );
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let (vault, _daemon) = mail_vault(&fake);
    let server = fake_mail::start(Protocol::Imap, &fake);
    let list = |account: &str| {
        // Under `timeout`, as README advises: mbsync 1.4 waits forever after a PassCmd that
        // failed during a SASL login.
        let mut mbsync = vault.program("timeout");
        mbsync
            .args(["10", "mbsync", "--config"])
            .arg(mbsync_config(&vault, account, server.port))
            .args(["--list", "gmail"]);
        mbsync.output().unwrap()
    };
    let output = list("mail");
    assert_ran(&output);
    assert!(String::from_utf8_lossy(&output.stdout).contains("INBOX"));
    assert_logged_in_with_vault_tokens(&server, &fake, 1);

    // No token, no login, and the user is told why.
    let output = list("no-such-account");
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("vault: error:"), "{said}");
    assert_logged_in_with_vault_tokens(&server, &fake, 1);
}

/// README's aerc account for `account`, pointed at the local fake IMAPS server.
fn aerc_accounts(account: &str, port: u16) -> String {
    format!(
        "[gmail]\nsource          = imaps+xoauth2://me%40example.com@127.0.0.1:{port}\nsource-cred-cmd = {} token {account}\ndefault         = INBOX\nfrom            = Me <me@example.com>\n",
        env!("CARGO_BIN_EXE_vault")
    )
}

#[test]
fn aerc_logs_in_with_xoauth2_from_vault_token() {
    assert!(
        have("aerc") && have("tmux"),
        "aerc and tmux are missing (.ci/run installs them)"
    );
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let (vault, _daemon) = mail_vault(&fake);
    let server = fake_mail::start(Protocol::Imaps, &fake);
    // aerc reads ~/.config/aerc; the tests' HOME is the vault's scratch home.
    let config = vault.root.path().join("home/.config/aerc");
    std::fs::create_dir_all(&config).unwrap();
    crate::support::write_private(
        &config.join("accounts.conf"),
        &aerc_accounts("mail", server.port),
    );
    for empty in ["aerc.conf", "binds.conf"] {
        std::fs::write(config.join(empty), "").unwrap();
    }
    let trusted = vault.root.path().join("fake-imap.pem");
    std::fs::write(&trusted, &server.certificate).unwrap();

    // aerc is a full-screen program: it runs in a detached tmux session, as on a terminal.
    let tmux_socket = vault.root.path().join("tmux.sock");
    let tmux = |args: &[&str]| {
        let mut tmux = vault.program("tmux");
        tmux.arg("-S")
            .arg(&tmux_socket)
            .args(args)
            .env("SSL_CERT_FILE", &trusted);
        tmux.output().unwrap()
    };
    assert_ran(&tmux(&[
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "50",
        "aerc",
    ]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.seen(|seen| seen.logins) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let screen = tmux(&["capture-pane", "-p"]);
    tmux(&["kill-server"]);
    assert_logged_in_with_vault_tokens(&server, &fake, 1);
    let screen = String::from_utf8_lossy(&screen.stdout);
    assert!(screen.contains("gmail"), "{screen}");
}
