//! The trust boundaries, attacked the way they would be: another local user (uid 65534 via
//! setuid, the tests run as root), planted symlinks and directories, an edited database, a
//! hostile archive. Each of these tests failed on the code before its fix.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::Scenario;
use crate::support::add_with_browser;
use crate::support::daemon::Daemon;
use crate::support::fake_oauth::OfflineRule;
use crate::support::{TestVault, write_private};

const NOBODY: u32 = 65534;

fn running_as_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root to act as another user");
    }
    root
}

/// A world-writable sticky directory like /tmp, private to this test, where "another user"
/// can plant things.
fn shared_tmp() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("tv-shared")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

fn as_nobody(program: &str) -> Command {
    let mut command = Command::new(program);
    command
        .uid(NOBODY)
        .gid(NOBODY)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    command
}

/// Another user's process listening at `socket` (creating its directory, world-writable),
/// answering every request with a token of its own choosing.
struct Impostor(Child);

const IMPOSTOR: &str = r#"
import os, socket, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
os.chmod(os.path.dirname(path), 0o777)
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o777)
s.listen(8)
print("ready", flush=True)
body = b'{"access_token":"impostor-token","token_type":"Bearer","expires_in":3600,"expires_at":9999999999,"scope":""}'
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    c.close()
"#;

impl Impostor {
    fn listen(socket: &Path) -> Impostor {
        let mut child = as_nobody("python3")
            .args(["-c", IMPOSTOR])
            .arg(socket)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the impostor did not start");
        Impostor(child)
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn another_user_squatting_the_old_tmp_socket_gets_nothing_and_hands_out_nothing() {
    if !running_as_root() {
        return;
    }
    let Scenario { fake, vault } = Scenario::new().account("mail");
    // cron, su, ssh without pam_systemd: no XDG_RUNTIME_DIR. The old fallback was
    // $TMPDIR/tokenvault-$UID, which another user can create first.
    let shared = shared_tmp();
    let me = rustix::process::geteuid().as_raw();
    let _impostor = Impostor::listen(&shared.path().join(format!("tokenvault-{me}/vault.sock")));
    let mut command = vault.command(&["token", "mail"]);
    command
        .env_remove("VAULT_SOCKET")
        .env("TMPDIR", shared.path());
    let run = vault.run_command(command, None);
    run.ok();
    assert!(
        fake.is_access_token(run.stdout.trim()),
        "the token came from someone else: {}",
        run.stdout
    );
}

#[test]
fn a_socket_directory_of_another_user_is_refused_before_anything_is_sent() {
    if !running_as_root() {
        return;
    }
    let Scenario { fake: _fake, vault } = Scenario::new().account("mail");
    let shared = shared_tmp();
    let planted = shared.path().join("tokenvault/vault.sock");
    let _impostor = Impostor::listen(&planted);
    for verb in [
        &["token", "mail"][..],
        &["exec", "mail", "--", "true"],
        &["git-credential", "--account", "mail", "get"],
    ] {
        let run = vault.run_with_stdin(
            &[&["--socket", planted.to_str().unwrap()], verb].concat(),
            "protocol=https\nhost=example.com\n",
        );
        run.fails_with(1, &format!("belongs to uid {NOBODY}"));
        assert!(!run.stdout.contains("impostor-token"), "{}", run.stdout);
    }
}

#[test]
fn a_daemon_of_another_user_behind_a_private_directory_is_refused() {
    if !running_as_root() {
        return;
    }
    let Scenario { fake: _fake, vault } = Scenario::new().account("mail");
    let shared = shared_tmp();
    let listening = shared.path().join("p/vault.sock");
    let _impostor = Impostor::listen(&listening);
    // The directory is the user's own; only the peer's credentials give the impostor away (a
    // socket file moved in, a bind mount, a directory the user chmod'ed back).
    let private = vault.root.path().join("run");
    std::fs::create_dir(&private).unwrap();
    let socket = private.join("vault.sock");
    std::fs::rename(&listening, &socket).unwrap();
    let run = vault.run(&["--socket", socket.to_str().unwrap(), "token", "mail"]);
    run.fails_with(1, &format!("served by uid {NOBODY}"));
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[test]
fn serve_never_changes_a_planted_symlink_target_or_the_current_directory() {
    if !running_as_root() {
        return;
    }
    let vault = TestVault::new(None);
    let ssh = vault.root.path().join("home/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).unwrap();
    let shared = shared_tmp();
    let link = shared.path().join("tokenvault");
    let planted = as_nobody("ln")
        .arg("-s")
        .arg(&ssh)
        .arg(&link)
        .status()
        .unwrap();
    assert!(planted.success());
    let socket = link.join("vault.sock");
    let run = vault.run(&[
        "serve",
        "--socket",
        socket.to_str().unwrap(),
        "--socket-group",
        "nogroup",
    ]);
    run.fails_with(1, "symbolic link");
    let meta = std::fs::metadata(&ssh).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.gid()),
        (0o700, 0),
        "the symlink's target was changed"
    );
    assert!(!ssh.join("vault.sock").exists());

    // `--socket x.sock`: the socket's directory is the current one, which is not the daemon's
    // to chmod.
    let work = vault.root.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = vault.command(&["serve", "--socket", "x.sock"]);
    command.current_dir(&work).stderr(Stdio::null());
    let mut daemon = command.spawn().unwrap();
    assert!(crate::support::eventually(Duration::from_secs(20), || {
        work.join("x.sock").exists()
    }));
    let mode = std::fs::metadata(&work).unwrap().mode() & 0o777;
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(mode, 0o755, "vault serve chmod'ed the current directory");
}

#[test]
fn no_child_inherits_the_master_key() {
    let Scenario { fake, vault } = Scenario::new().account("mail");
    let run = vault.run(&["exec", "mail", "--", "sh", "-c", "env"]);
    run.ok();
    assert!(run.stdout.contains("ACCESS_TOKEN="), "{}", run.stdout);
    assert!(
        !run.stdout.contains("VAULT_MASTER_KEY"),
        "vault exec passed the master key on"
    );

    // The alert command gets an allow-listed environment: not the master key, not anything
    // else the daemon happened to be started with.
    let seen = vault.root.path().join("alert-env");
    std::fs::write(
        vault.dir.join("config.toml"),
        format!(
            "[alert]\ncommand = \"env > {}\"\ndesktop = false\n[validation]\nschedule = \"*/2 * * * * *\"\n",
            seen.display()
        ),
    )
    .unwrap();
    let mut command = vault.command(&["serve"]);
    command
        .env("OTHER_TOOL_TOKEN", "not-for-children")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = command.spawn().unwrap();
    fake.revoke_all();
    let alerted = crate::support::eventually(Duration::from_secs(15), || {
        std::fs::read_to_string(&seen).is_ok_and(|env| env.contains("VAULT_EVENT"))
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(alerted, "no alert");
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(env.contains("VAULT_ACCOUNT=mail"), "{env}");
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains("VAULT_MASTER_KEY"), "{env}");
    assert!(!env.contains("OTHER_TOOL_TOKEN"), "{env}");
}

#[test]
fn a_vault_directory_others_can_write_is_refused() {
    if !running_as_root() {
        return;
    }
    // Created by another user (e.g. /tmp/vault, 0777) before the victim's init.
    let shared = shared_tmp();
    let theirs = shared.path().join("vault");
    assert!(
        as_nobody("mkdir")
            .args(["-m", "777"])
            .arg(&theirs)
            .status()
            .unwrap()
            .success()
    );
    let vault = TestVault::uninitialized(None);
    let run = vault.run(&["--vault", theirs.to_str().unwrap(), "init"]);
    run.fails_with(1, &format!("belongs to uid {NOBODY}"));
    assert!(!theirs.join("vault.db").exists());

    // An existing vault whose directory became group-writable is refused at every open.
    let vault = TestVault::new(None);
    std::fs::set_permissions(&vault.dir, std::fs::Permissions::from_mode(0o770)).unwrap();
    vault
        .run(&["list"])
        .fails_with(1, "can be written by group or others");
}

#[test]
fn nothing_in_the_vault_directory_is_opened_through_a_symlink() {
    let Scenario { fake: _fake, vault } = Scenario::new().account("mail");

    // vault.db itself.
    let elsewhere = vault.root.path().join("elsewhere.db");
    std::fs::rename(vault.db_path(), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, vault.db_path()).unwrap();
    let run = vault.run(&["list"]);
    assert_ne!(run.code, 0, "opened through a symlink: {}", run.stdout);
    std::fs::remove_file(vault.db_path()).unwrap();
    std::fs::rename(&elsewhere, vault.db_path()).unwrap();
    vault.run(&["list"]).ok();

    // audit.log pointing at a file of the user's: the daemon must not append to it.
    let bashrc = vault.root.path().join("bashrc");
    std::fs::write(&bashrc, "# mine\n").unwrap();
    std::os::unix::fs::symlink(&bashrc, vault.dir.join("audit.log")).unwrap();
    vault.run(&["serve"]).fails_with(1, "audit.log");
    assert_eq!(std::fs::read_to_string(&bashrc).unwrap(), "# mine\n");
    std::fs::remove_file(vault.dir.join("audit.log")).unwrap();

    // config.toml: its alert command runs as the user.
    let config = vault.dir.join("config.toml");
    let planted = vault.root.path().join("planted.toml");
    std::fs::write(&planted, "[alert]\ncommand = \"touch /tmp/pwned\"\n").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&planted, &config).unwrap();
    vault.run(&["serve"]).fails_with(1, "config.toml");
    std::fs::remove_file(&config).unwrap();
    std::fs::write(&config, "[alert]\ndesktop = false\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o620)).unwrap();
    vault.run(&["serve"]).fails_with(1, "chmod 600");
}

#[test]
fn vault_files_are_private_whatever_the_umask() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::uninitialized(Some(&fake));
    let mut init = vault.command_via(&["sh", "-c", "umask 022; exec \"$0\" \"$@\""], &["init"]);
    init.stdin(Stdio::null());
    vault.run_command(init, None).ok();
    add_with_browser(&vault, &fake, "mail").ok();
    let daemon = Daemon::start(&vault, &[]);
    assert_eq!(daemon.get("/v1/token/mail").status, 200);
    let mut seen = Vec::new();
    for (path, _) in vault.files_bytes() {
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
    }
    for name in ["vault.db", "vault.db-wal", "vault.db-shm", "audit.log"] {
        assert!(seen.iter().any(|seen| seen == name), "{name} in {seen:?}");
    }
}

/// Runs SQL on the vault's database, as someone with write access to the file would.
fn edit_db(vault: &TestVault, sql: &str) {
    let db = rusqlite::Connection::open(vault.db_path()).unwrap();
    assert!(db.execute(sql, []).unwrap() > 0, "{sql}");
}

#[test]
fn edited_account_settings_never_send_a_secret_anywhere() {
    let fake = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let evil = crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "mail").ok();
    add_with_browser(&vault, &fake, "work").ok();
    edit_db(
        &vault,
        &format!(
            "UPDATE accounts SET config = json_set(config, '$.endpoints.token_url', '{}') WHERE name = 'mail'",
            evil.token_url()
        ),
    );
    // A token that must be refreshed: the refresh token would go to the edited URL.
    vault
        .run(&["token", "mail", "--min-valid", "7200"])
        .fails_with(1, "changed outside tokenvault");
    assert_eq!(evil.counters(|c| c.token_requests), 0, "a secret was sent");

    // A cleared tag is no way around it, nor is a renamed account.
    edit_db(
        &vault,
        "UPDATE accounts SET config_mac = NULL WHERE name = 'work'",
    );
    vault
        .run(&["token", "work", "--min-valid", "7200"])
        .fails_with(1, "changed outside tokenvault");
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "mail").ok();
    edit_db(
        &vault,
        "UPDATE accounts SET name = 'other' WHERE name = 'mail'",
    );
    vault
        .run(&["token", "other", "--min-valid", "7200"])
        .fails_with(1, "changed outside tokenvault");
    // Untouched accounts keep working, through a rekey too.
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "mail").ok();
    let new_key = vault.root.path().join("new.key");
    vault
        .run(&["rekey", "--new-key-file", new_key.to_str().unwrap()])
        .ok();
    let mut command = vault.command(&[
        "--key-file",
        new_key.to_str().unwrap(),
        "token",
        "mail",
        "--min-valid",
        "7200",
    ]);
    command.env_remove("VAULT_MASTER_KEY");
    let run = vault.run_command(command, None);
    run.ok();
    assert!(fake.is_access_token(run.stdout.trim()));
}

#[test]
fn an_archive_cannot_bring_a_plain_http_token_url() {
    use tokenvault::account::{AccountConfig, Grant, LoginMethod, SecretKind};
    use tokenvault::oauth::ClientAuth;
    use tokenvault::oauth::provider::Endpoints;
    // An archive made by hand (here: a scratch vault written through the library, whose URL
    // checks the CLI would have refused).
    let source = TestVault::new(None);
    let mut store = source.open_store();
    let config = AccountConfig {
        grant: Grant::RefreshToken {
            client_id: "id".into(),
            login: LoginMethod::Browser,
            identity: None,
        },
        endpoints: Endpoints::token_only("custom", "http://collector.example/token".into()),
        client_auth: ClientAuth::Basic,
        scopes: vec![],
    };
    let refresh = tokenvault::secret::SecretString::from("planted-refresh-token".to_owned());
    let access = tokenvault::secret::SecretString::from(String::new());
    store
        .insert_account(
            "leaky",
            &config,
            &[(SecretKind::RefreshToken, &refresh)],
            &tokenvault::store::TokenUpdate {
                access_token: &access,
                access_expires_at: None,
                new_refresh_token: None,
                refresh_expires_at: None,
                validated: false,
            },
        )
        .unwrap();
    drop(store);
    let passphrase = source.root.path().join("passphrase");
    write_private(&passphrase, "correct horse battery staple\n");
    let archive: PathBuf = source.root.path().join("hostile.tvx");
    crate::security::with_passphrase(&source, "export", &archive, &passphrase).ok();

    let target = TestVault::new(None);
    crate::security::with_passphrase(&target, "import", &archive, &passphrase)
        .fails_with(1, "must be an https URL");
    let list = target.run(&["list"]);
    assert!(!list.stdout.contains("leaky"), "{}", list.stdout);
}

#[test]
fn a_relative_key_file_keeps_working_from_another_directory() {
    let vault = TestVault::uninitialized(None);
    let work = vault.root.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let with_relative_key = |cwd: &Path, args: &[&str]| {
        let mut command = vault.command(args);
        command.env_remove("VAULT_MASTER_KEY").current_dir(cwd);
        vault.run_command(command, None)
    };
    with_relative_key(&work, &["--key-file", "keys/master.key", "init"]).ok();
    // Later, from elsewhere, without naming the key: the recorded path must still find it.
    with_relative_key(vault.root.path(), &["list"]).ok();
}

#[test]
fn the_git_helper_answers_only_https_and_the_configured_host() {
    let Scenario { fake, vault } = Scenario::new().account("forge");
    let ask = |extra: &[&str], request: &str| {
        let run = vault.run_with_stdin(
            &[&["git-credential", "--account", "forge"], extra, &["get"]].concat(),
            request,
        );
        run.ok();
        run.stdout
    };
    // A repository whose remote is plain http to another host gets nothing.
    assert_eq!(ask(&[], "protocol=http\nhost=evil.example\n"), "");
    assert_eq!(
        ask(
            &["--host", "github.com"],
            "protocol=https\nhost=evil.example\n"
        ),
        ""
    );
    let answer = ask(
        &["--host", "github.com"],
        "protocol=https\nhost=github.com\n",
    );
    let password = answer
        .lines()
        .find_map(|line| line.strip_prefix("password="))
        .unwrap_or_default();
    assert!(fake.is_access_token(password), "{answer}");
}

#[test]
fn after_a_rekey_the_database_file_alone_no_longer_opens_with_the_old_key() {
    let Scenario { fake: _fake, vault } = Scenario::new().account("mail");
    let daemon = Daemon::start(&vault, &[]);
    let old_key = vault.key_file();
    let new_key = vault.root.path().join("new.key");
    vault
        .run(&["rekey", "--new-key-file", new_key.to_str().unwrap()])
        .ok();
    // A file backup of vault.db taken now, without its -wal, with the daemon still running.
    let backup = vault.root.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    std::fs::copy(vault.db_path(), backup.join("vault.db")).unwrap();
    let mut command = vault.command(&[
        "--vault",
        backup.to_str().unwrap(),
        "--key-file",
        old_key.to_str().unwrap(),
        "list",
    ]);
    command.env_remove("VAULT_MASTER_KEY");
    vault
        .run_command(command, None)
        .fails_with(6, "does not open this vault");
    drop(daemon);
}

#[test]
fn vault_processes_leave_no_core_dump() {
    let vault = TestVault::new(None);
    let daemon = Daemon::start(&vault, &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.child.id())).unwrap();
    let core = limits
        .lines()
        .find(|line| line.starts_with("Max core file size"))
        .unwrap();
    let soft = core.split_whitespace().nth(4);
    assert_eq!(soft, Some("0"), "{core}");
    // …but the program `vault exec` becomes gets the user's umask and core limit back.
    let Scenario { fake: _fake, vault } = Scenario::new().account("mail");
    let mut command = vault.command_via(
        &["sh", "-c", "umask 022; ulimit -c 1024; exec \"$0\" \"$@\""],
        &["exec", "mail", "--", "sh", "-c", "umask; ulimit -c"],
    );
    command.stdin(Stdio::null());
    let run = vault.run_command(command, None);
    run.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines, ["0022", "1024"], "{}", run.stdout);
}

/// Another user opens connections to the daemon and holds them: `pipelined` sends requests
/// without reading answers, `silent` sends nothing, `partial` half a token request; `churn`
/// keeps opening silent connections, about 2,000 a second, holding the last `count`, until
/// killed.
const FLOOD: &str = r#"
import collections, resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
path, count, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if kind == "churn":
    held = collections.deque()
    print("flooding", flush=True)
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
        except OSError:
            time.sleep(0.001)
        held.append(s)
        if len(held) > count:
            held.popleft().close()
        time.sleep(0.0005)
held = []
request = {
    "pipelined": b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n" * 100,
    "silent": b"",
    "partial": b"GET /v1/token/mail?min_valid=60 HTTP/1.1\r\nConnec",
}[kind]
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.setblocking(False)
        s.send(request)
    except OSError:
        pass
    held.append(s)
print("flooding", flush=True)
time.sleep(60)
"#;

/// Starts another user's flood of `count` connections of `kind` (see `FLOOD`) on the socket;
/// returns once they are all open.
fn flood_as_nobody(socket: &std::path::Path, count: u32, kind: &str) -> std::process::Child {
    let mut flood = as_nobody("python3")
        .args(["-c", FLOOD])
        .arg(socket)
        .arg(count.to_string())
        .arg(kind)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(flood.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "flooding");
    flood
}

fn open_descriptors(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon.child.id()))
        .unwrap()
        .count()
}

#[test]
fn another_user_flooding_the_socket_cannot_stall_the_owner() {
    if !running_as_root() {
        return;
    }
    let Scenario { fake: _fake, vault } = Scenario::new().account("mail");
    std::fs::set_permissions(vault.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&vault, &["--socket-group", "nogroup"]);
    let mut flood = flood_as_nobody(&daemon.socket, 2000, "pipelined");
    // The owner still gets a token at once.
    let run = vault.run_command(
        vault.command_via(&["timeout", "20"], &["token", "mail"]),
        None,
    );
    run.ok();
    let open = open_descriptors(&daemon);
    let _ = flood.kill();
    let _ = flood.wait();
    assert!(
        open < 700,
        "the daemon holds {open} descriptors for one caller"
    );
}

/// The fast path's share of waiting connections is the owner's first: another user's endless
/// stream of silent connections never pushes the owner's `vault token` onto the slower path.
#[test]
fn another_users_stream_of_silent_connections_leaves_the_owner_the_fast_path() {
    if !running_as_root() {
        return;
    }
    let Scenario { fake, vault } = Scenario::new().account("mail");
    std::fs::set_permissions(vault.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&vault, &["--socket-group", "nogroup"]);
    // The first answer loads the token from the vault: the general path's work.
    assert_eq!(daemon.get("/v1/token/mail").status, 200);
    let fast = |daemon: &Daemon| -> u64 {
        let metrics = daemon.get("/v1/metrics").body;
        metrics
            .lines()
            .filter(|line| {
                line.starts_with("tokenvault_socket_connections_total")
                    && (line.contains("at_accept") || line.contains("after_wait"))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    // Each silent connection is held ~0.2 s, under the per-user cap of open connections: the
    // accepting thread always has more of them than the fast path may watch.
    let mut floods = [flood_as_nobody(&daemon.socket, 400, "churn")];
    std::thread::sleep(Duration::from_millis(500));
    let before = fast(&daemon);
    // Like `vault token`, which checks who listens between connecting and sending — a little
    // slower, so that each request arrives after its connection was accepted.
    let asked = Command::new("python3")
        .args(["-c", SLOW_ASKER])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    let answers = String::from_utf8_lossy(&asked.stdout);
    assert_eq!(answers.matches("200").count(), 20, "{answers}");
    assert!(
        answers
            .split_whitespace()
            .skip(1)
            .step_by(2)
            .all(|token| fake.is_access_token(token))
    );
    let answered_fast = fast(&daemon) - before;
    for flood in &mut floods {
        let _ = flood.kill();
        let _ = flood.wait();
    }
    assert_eq!(
        answered_fast, 20,
        "owner's token calls answered on the fast path"
    );
}

/// The owner asking for a token 20 times, each request sent 20 ms after connecting: prints
/// each answer's status and token.
const SLOW_ASKER: &str = r#"
import json, socket, sys, time
for _ in range(20):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    time.sleep(0.02)
    s.sendall(b"GET /v1/token/mail HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    print(head.split()[1].decode(), json.loads(body)["access_token"])
"#;

/// The accepting thread watches a connection for its first bytes (the token fast path): silent
/// and half-sent connections from another user must neither stall the owner's tokens nor stay
/// open past the request-head deadline.
#[test]
fn silent_and_half_sent_connections_cannot_hold_the_accepting_thread() {
    if !running_as_root() {
        return;
    }
    let Scenario { fake, vault } = Scenario::new().account("mail");
    std::fs::set_permissions(vault.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&vault, &["--socket-group", "nogroup"]);
    let before = open_descriptors(&daemon);
    let mut floods = [
        flood_as_nobody(&daemon.socket, 300, "silent"),
        flood_as_nobody(&daemon.socket, 300, "partial"),
    ];
    for _ in 0..20 {
        let run = vault.run_command(
            vault.command_via(&["timeout", "20"], &["token", "mail"]),
            None,
        );
        run.ok();
        assert!(fake.is_access_token(run.stdout.trim()));
    }
    // Past the 5 s request-head deadline every one of them is closed, though still held open
    // by their sender.
    assert!(
        crate::support::eventually(Duration::from_secs(15), || open_descriptors(&daemon)
            <= before + 2),
        "{} descriptors open, {before} before the flood",
        open_descriptors(&daemon)
    );
    for flood in &mut floods {
        let _ = flood.kill();
        let _ = flood.wait();
    }
}
