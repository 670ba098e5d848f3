//! What the end-to-end tests share: `TestVault` runs the real `vault` binary against a real
//! vault directory and scans every output; `daemon` starts `vault serve` and talks to its
//! socket; `fake_oauth` (the dev provider), `fake_forge` and `fake_mail` are the servers on
//! 127.0.0.1; `scenario` builds the usual world in one call.

pub mod daemon;
pub mod fake_forge;
pub mod fake_keys;
pub mod fake_mail;
pub mod fake_oauth;
pub mod postgres;
mod scenario;

pub use scenario::{Scenario, Served};

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use fake_oauth::{CLIENT_ID, CLIENT_SECRET, FakeOAuth};

pub struct TestVault {
    pub root: tempfile::TempDir,
    pub dir: PathBuf,
    master_key: String,
    /// Set for a vault whose master key is derived from the passphrase in this file (then
    /// `VAULT_MASTER_KEY` is not set).
    passphrase_file: Option<PathBuf>,
    /// Extra planted secrets to look for besides the fake server's.
    pub planted: Vec<String>,
    pub fake: Option<FakeOAuth>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn fails_with(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }
}

pub fn random_key() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    STANDARD.encode(bytes)
}

/// A private key chunk from the service-account fixture, for leak scans.
pub fn private_key_sample() -> String {
    let key: serde_json::Value =
        serde_json::from_str(include_str!("../../fixtures/service-account.json")).unwrap();
    let pem = key["private_key"].as_str().unwrap();
    pem.lines().nth(5).unwrap().to_owned()
}

impl TestVault {
    /// A vault whose master key comes from VAULT_MASTER_KEY, already initialized.
    pub fn new(fake: Option<&FakeOAuth>) -> TestVault {
        let vault = Self::uninitialized(fake);
        vault.run(&["init"]).ok();
        vault
    }

    /// A vault whose master key is derived from a passphrase, every command given it in the file
    /// `VAULT_KEY_PASSPHRASE_FILE` names; already initialized.
    pub fn with_passphrase(fake: Option<&FakeOAuth>, passphrase: &str) -> TestVault {
        let mut vault = Self::uninitialized(fake);
        let file = vault.root.path().join("passphrase");
        write_private(&file, &format!("{passphrase}\n"));
        vault.passphrase_file = Some(file);
        vault.planted.push(passphrase.to_owned());
        vault.run(&["init", "--passphrase"]).ok();
        vault
    }

    /// Another machine holding a copy of this vault (the same master key, the directory copied
    /// byte for byte): what users do when they copy a refresh token around.
    pub fn copy(&self) -> TestVault {
        let copy = TestVault {
            master_key: self.master_key.clone(),
            ..Self::uninitialized(self.fake.as_ref())
        };
        let status = Command::new("cp")
            .arg("-a")
            .arg(&self.dir)
            .arg(&copy.dir)
            .status()
            .unwrap();
        assert!(status.success());
        copy
    }

    pub fn uninitialized(fake: Option<&FakeOAuth>) -> TestVault {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("vault");
        TestVault {
            dir,
            root,
            master_key: random_key(),
            passphrase_file: None,
            planted: vec![private_key_sample()],
            fake: fake.cloned(),
        }
    }

    /// The `vault` command with a clean, isolated environment: no keyring, no desktop, a browser
    /// helper that follows the redirect like a user who approves.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_via(&[], args)
    }

    /// `prefix… vault args…`, e.g. under systemd-socket-activate, with the same environment.
    pub fn command_via(&self, prefix: &[&str], args: &[&str]) -> Command {
        let vault = env!("CARGO_BIN_EXE_vault");
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut command = self.program(program);
                command.args(rest).arg(vault);
                command
            }
            None => self.program(vault),
        };
        command.args(args);
        command
    }

    /// Another program (git, msmtp, mbsync…) in the environment `vault` runs in here, so that
    /// the `vault token` it runs finds this vault and its daemon.
    pub fn program(&self, program: &str) -> Command {
        let home = self.root.path().join("home");
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                "unix:path=/nonexistent/tokenvault-test-bus",
            )
            .env("VAULT_DIR", &self.dir)
            .env("VAULT_SOCKET", self.socket())
            .env("BROWSER", self.browser_helper())
            .stdin(Stdio::null());
        match &self.passphrase_file {
            Some(file) => command.env("VAULT_KEY_PASSPHRASE_FILE", file),
            None => command.env("VAULT_MASTER_KEY", &self.master_key),
        };
        command
    }

    fn browser_helper(&self) -> PathBuf {
        let path = self.root.path().join("browser.sh");
        if !path.exists() {
            std::fs::write(
                &path,
                "#!/bin/sh\nexec curl -s -o /dev/null -L --max-time 20 \"$1\"\n",
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        path
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_command(self.command(args), None)
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        self.run_command(self.command(args), Some(stdin))
    }

    /// Runs and checks that no planted secret reached stdout or stderr. Access tokens may appear
    /// on stdout only (that is what `vault token` is for).
    pub fn run_command(&self, mut command: Command, stdin: Option<&str>) -> Run {
        if stdin.is_some() {
            command.stdin(Stdio::piped());
        }
        let shown: Vec<String> = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start vault");
        if let Some(text) = stdin {
            // A command that exits without reading its input (an early refusal) is no failure.
            let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
        }
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().unwrap();
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        // E2E_ECHO=1 shows each run as a transcript (cargo test -- --nocapture).
        if std::env::var_os("E2E_ECHO").is_some() {
            eprintln!(
                "$ vault {}\n{}{}[exit {}]\n",
                shown.join(" "),
                run.stdout,
                run.stderr,
                run.code
            );
        }
        for secret in self.all_planted() {
            assert!(
                !run.stdout.contains(&secret) && !run.stderr.contains(&secret),
                "a planted secret leaked into the output:\n{}\n{}",
                run.stdout,
                run.stderr
            );
        }
        if let Some(fake) = &self.fake {
            for word in run
                .stderr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            {
                assert!(
                    !fake.is_access_token(word),
                    "an access token leaked into stderr:\n{}",
                    run.stderr
                );
            }
        }
        run
    }

    pub fn all_planted(&self) -> Vec<String> {
        let mut all = self.planted.clone();
        if let Some(fake) = &self.fake {
            all.extend(fake.secrets());
        }
        all
    }

    /// A 0600 key file holding this vault's master key (for opening the store in-process).
    pub fn key_file(&self) -> PathBuf {
        let path = self.root.path().join("master.key");
        write_private(&path, &format!("{}\n", self.master_key));
        path
    }

    /// The vault's store, opened in this process with its master key.
    pub fn open_store(&self) -> tokenvault::store::Store {
        if self.passphrase_file.is_some() {
            let unlock = tokenvault::keys::Unlock {
                source: None,
                passphrase_file: self.passphrase_file.clone(),
            };
            return tokenvault::store::Store::open(&self.dir, &unlock).unwrap();
        }
        let key = tokenvault::keys::KeySource::File(self.key_file());
        tokenvault::store::Store::open(
            &self.dir,
            &tokenvault::keys::Unlock {
                source: Some(key),
                passphrase_file: None,
            },
        )
        .unwrap()
    }

    /// Secret `kind` of account `name` as stored, opened with the vault's master key.
    pub fn stored_secret(&self, name: &str, kind: tokenvault::account::SecretKind) -> String {
        let store = self.open_store();
        let account = store.account(name).unwrap();
        store
            .secret(&account, kind)
            .unwrap()
            .unwrap()
            .expose()
            .clone()
    }

    /// The daemon's socket for this vault (never the user's real one).
    pub fn socket(&self) -> PathBuf {
        self.root.path().join("run/vault.sock")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("vault.db")
    }

    /// Every file under the vault dir, as bytes (DB, WAL, SHM, locks).
    pub fn files_bytes(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push((path.clone(), std::fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir, &mut out);
        out
    }

    pub fn assert_no_plaintext_on_disk(&self) {
        let files = self.files_bytes();
        assert!(files.iter().any(|(path, _)| path.ends_with("vault.db")));
        for (path, bytes) in files {
            for secret in self.all_planted() {
                assert!(
                    !bytes
                        .windows(secret.len())
                        .any(|window| window == secret.as_bytes()),
                    "{} holds a planted secret in plaintext",
                    path.display()
                );
            }
        }
    }
}

pub fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Runs `command` with `input` on its stdin and collects its output.
pub fn run_with_input(mut command: Command, input: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

// Accounts as most tests add them.
/// Writes the client secret to a 0600 file and returns its path.
pub fn client_secret_file(vault: &TestVault) -> PathBuf {
    let path = vault.root.path().join("client-secret.txt");
    write_private(&path, &format!("{CLIENT_SECRET}\n"));
    path
}

/// `add-account NAME` through the browser flow with OIDC discovery (offline_access +
/// prompt=consent) and a confidential client, plus `extra` arguments.
pub fn browser_add_args(
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

pub fn add_with_browser(vault: &TestVault, fake: &FakeOAuth, name: &str) -> Run {
    let args = browser_add_args(vault, fake, name, &["--timeout", "30"]);
    vault.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The service-account fixture, pointed at `fake` (which is told to trust it), written to a file.
pub fn service_account_key_file(vault: &TestVault, fake: &FakeOAuth) -> PathBuf {
    fake_oauth::trust_fixture_service_account(fake);
    let key =
        include_str!("../../fixtures/service-account.json").replace("TOKEN_URI", &fake.token_url());
    let path = vault.root.path().join("sa.json");
    std::fs::write(&path, key).unwrap();
    path
}

/// The access token `vault token` prints, checked to be one the server issued.
pub fn token(vault: &TestVault, fake: &FakeOAuth, args: &[&str]) -> String {
    let run = vault.run(&[&["token"], args].concat());
    run.ok();
    let token = run.stdout.trim().to_owned();
    assert!(
        fake.is_access_token(&token),
        "not an issued token: {token:?}"
    );
    token
}

// Waiting and alerts.
/// Writes `config.toml` with an alert command that appends one line per alert to a file, and
/// the fake server's webhook. Returns the file.
pub fn alerting_config(vault: &TestVault, fake: &FakeOAuth, extra: &str) -> PathBuf {
    let alerts = vault.root.path().join("alerts.log");
    let config = format!(
        "[alert]\ncommand = \"printf '%s|%s|%s\\\\n' \\\"$VAULT_ACCOUNT\\\" \\\"$VAULT_EVENT\\\" \\\"$VAULT_REASON\\\" >> {}\"\nwebhook = \"{}/webhook\"\ndesktop = false\n{extra}",
        alerts.display(),
        fake.base
    );
    std::fs::write(vault.dir.join("config.toml"), config).unwrap();
    alerts
}

pub fn alert_lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until `done` holds, up to `limit`.
pub fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}
