//! Fitting the programs people already run: `vault exec`, shell completions, the manual page.

use crate::support::Scenario;
use crate::support::TestVault;
use crate::support::add_with_browser;
use crate::support::daemon::Daemon;
use crate::support::fake_oauth::OfflineRule;

#[test]
fn exec_runs_a_command_with_the_token_in_its_environment() {
    let Scenario { fake, vault } = Scenario::new().account("api");
    let script = "printf %s \"$ACCESS_TOKEN\"; exit 7";
    let run = vault.run(&["exec", "api", "--no-daemon", "--", "sh", "-c", script]);
    assert_eq!(
        run.code, 7,
        "the command's exit code passes through: {}",
        run.stderr
    );
    assert!(fake.is_access_token(&run.stdout), "{:?}", run.stdout);

    let daemon = Daemon::start(&vault, &[]);
    let run = vault.run(&[
        "exec",
        "api",
        "--env",
        "GMAIL_TOKEN",
        "--",
        "sh",
        "-c",
        "printf %s \"$GMAIL_TOKEN\"",
    ]);
    run.ok();
    assert!(fake.is_access_token(&run.stdout));
    assert!(
        !run.stderr.contains("no daemon"),
        "asked the daemon: {}",
        run.stderr
    );
    drop(daemon);

    vault
        .run(&["exec", "api", "--no-daemon", "--", "/nonexistent/program"])
        .fails_with(1, "cannot run /nonexistent/program");
    vault
        .run(&["exec", "ghost", "--no-daemon", "--", "true"])
        .fails_with(1, "no account named");
}

#[test]
fn completions_load_in_bash_and_the_man_page_renders() {
    let vault = TestVault::new(None);
    let script = vault.run(&["completions", "bash"]);
    script.ok();
    let path = vault.root.path().join("vault.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p vault", path.display()))
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("vault"));
    for shell in ["zsh", "fish"] {
        assert!(!vault.run(&["completions", shell]).ok().stdout.is_empty());
    }
    let man = vault.run(&["man"]);
    man.ok();
    assert!(
        man.stdout.contains(".TH vault") && man.stdout.contains("add\\-account"),
        "{}",
        &man.stdout[..200]
    );
}

#[test]
fn status_is_a_table_for_people_and_json_for_scripts() {
    let Scenario { fake, vault } = Scenario::new().account("fine");
    add_with_browser(&vault, &fake, "dead").ok();
    fake.revoke_all();
    vault
        .run(&["token", "dead", "--no-daemon", "--min-valid", "7200"])
        .fails_with(3, "vault login dead");
    let table = vault.run(&["status"]);
    table.ok();
    assert!(
        table.stdout.starts_with("NAME") && table.stdout.contains("NEXT VALIDATION"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("reauth_required") && table.stdout.contains("invalid_grant"),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains('\x1b'), "no colours when piped");
    let json: serde_json::Value =
        serde_json::from_str(&vault.run(&["status", "--json"]).stdout).unwrap();
    let states: Vec<_> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].clone(), s["state"].clone()))
        .collect();
    assert_eq!(
        states,
        [
            ("dead".into(), "reauth_required".into()),
            ("fine".into(), "active".into())
        ]
    );
    assert!(
        json[1]["next_validation_at"].as_i64().unwrap()
            > json[1]["last_refresh_at"].as_i64().unwrap()
    );
    assert!(
        json[0]["next_validation_at"].is_null(),
        "no validation while re-authorization is needed"
    );
    let one: serde_json::Value =
        serde_json::from_str(&vault.run(&["status", "fine", "--json"]).stdout).unwrap();
    assert_eq!(one["validation_schedule"], "0 0 */6 * * *");
}

pub(crate) fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn systemd_units_verify_and_socket_activation_serves() {
    assert!(
        have("systemd-analyze") && have("systemd-socket-activate"),
        "systemd's tools are missing (.ci/run installs them)"
    );
    let Scenario { fake, vault } = Scenario::new().account("svc");
    let units = vault.root.path().join("units");
    vault
        .run(&["install-service", "--dir", units.to_str().unwrap()])
        .ok();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("tokenvault.socket"))
        .arg(units.join("tokenvault.service"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let service = std::fs::read_to_string(units.join("tokenvault.service")).unwrap();
    assert!(
        service.contains("serve") && service.contains("VAULT_DIR="),
        "{service}"
    );

    // systemd-socket-activate owns the socket and starts `vault serve` at the first connection.
    let socket = vault.root.path().join("activated.sock");
    // It passes on only the environment named with -E.
    let mut activate = vec!["systemd-socket-activate", "-l", socket.to_str().unwrap()];
    for name in [
        "VAULT_DIR",
        "VAULT_MASTER_KEY",
        "HOME",
        "XDG_CONFIG_HOME",
        "PATH",
    ] {
        activate.extend(["-E", name]);
    }
    let mut command = vault.command_via(&activate, &["serve"]);
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut activator = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let answer = crate::support::daemon::get(&socket, "/v1/token/svc");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(fake.is_access_token(answer.json()["access_token"].as_str().unwrap()));
    let _ = activator.kill();
    let _ = activator.wait();
}

#[test]
fn git_pushes_over_https_with_the_vaults_token() {
    let Scenario { fake, vault } = Scenario::new().account("forge");
    let _daemon = Daemon::start(&vault, &[]);
    let forge_root = vault.root.path().join("forge");
    std::fs::create_dir_all(&forge_root).unwrap();
    let forge = crate::support::fake_forge::start(&forge_root, &fake);
    let work = vault.root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let git = |directory: &std::path::Path, args: &[&str]| git_in(&vault, directory, args);
    let ran = |output: std::process::Output| {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    ran(git(
        &forge_root,
        &["init", "--quiet", "--bare", "project.git"],
    ));
    ran(git(&work, &["init", "--quiet"]));
    ran(git(
        &work,
        &["commit", "--quiet", "--allow-empty", "-m", "first"],
    ));
    let pushed = ran(git(&work, &["rev-parse", "HEAD"]));

    // README's recipe: the helper is the whole credential story.
    let helper = |account: &str| {
        format!(
            "credential.helper=!{} git-credential --account {account}",
            env!("CARGO_BIN_EXE_vault")
        )
    };
    let push = |account: &str| {
        git(
            &work,
            &[
                "-c",
                &helper(account),
                "push",
                "--quiet",
                &forge.url("project.git"),
                "HEAD:refs/heads/main",
            ],
        )
    };
    ran(push("forge"));
    let landed = ran(git(
        &forge.root.join("project.git"),
        &["rev-parse", "refs/heads/main"],
    ));
    assert_eq!(landed, pushed);
    assert!(forge.refused() >= 1, "git first asked without credentials");

    // No token from the vault: git gets no password and the push fails.
    ran(git(
        &work,
        &["commit", "--quiet", "--allow-empty", "-m", "second"],
    ));
    let refused = push("no-such-account");
    assert!(!refused.status.success());
    let landed = ran(git(
        &forge.root.join("project.git"),
        &["rev-parse", "refs/heads/main"],
    ));
    assert_eq!(landed, pushed, "nothing landed without a token");
}

#[test]
fn google_auth_gets_the_token_from_the_metadata_endpoint() {
    let python = std::process::Command::new("python3")
        .args(["-c", "import google.auth, requests"])
        .status();
    assert!(
        python.is_ok_and(|s| s.success()),
        "python3 with google-auth and requests is missing (.ci/run installs them)"
    );
    let fake = crate::support::fake_oauth::start(OfflineRule::Google);
    let vault = TestVault::new(Some(&fake));
    let key_path = crate::support::service_account_key_file(&vault, &fake);
    vault
        .run(&[
            "add-account",
            "robot",
            "--service-account",
            key_path.to_str().unwrap(),
            "--scope",
            "https://www.googleapis.com/auth/cloud-platform",
        ])
        .ok();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _daemon = Daemon::start(
        &vault,
        &["--metadata-addr", &addr, "--metadata-account", "robot"],
    );
    let script = "import google.auth.compute_engine as ce, google.auth.transport.requests as r\n\
                  from google.auth.compute_engine import _metadata\n\
                  request = r.Request()\n\
                  assert _metadata.ping(request), 'ping'\n\
                  c = ce.Credentials()\n\
                  c.refresh(request)\n\
                  print(c.service_account_email)\n\
                  print(c.token)\n";
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .env("GCE_METADATA_HOST", &addr)
        .env("GCE_METADATA_IP", &addr)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("robot@tokenvault-tests.iam.gserviceaccount.com")
    );
    assert!(fake.is_access_token(lines.next().unwrap()), "{stdout}");
    // Without the header, as a forged request from a browser would be: refused.
    let refused = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!(
            "http://{addr}/computeMetadata/v1/instance/service-accounts/default/token"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "403");
    // With the header, but from a web page: a rebound DNS name as Host, an Origin, a cross-site
    // fetch. The metadata names and loopback are served.
    let token_url =
        format!("http://{addr}/computeMetadata/v1/instance/service-accounts/default/token");
    let status_of = |extra: &[&str], as_nobody: bool| {
        use std::os::unix::process::CommandExt;
        let mut curl = std::process::Command::new("curl");
        curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", "Metadata-Flavor: Google"])
            .args(extra)
            .arg(&token_url);
        if as_nobody {
            curl.uid(65534).gid(65534);
        }
        String::from_utf8_lossy(&curl.output().unwrap().stdout).into_owned()
    };
    assert_eq!(
        status_of(&["-H", "Host: attacker.example:80"], false),
        "403"
    );
    assert_eq!(
        status_of(&["-H", "Origin: http://attacker.example"], false),
        "403"
    );
    assert_eq!(
        status_of(&["-H", "Sec-Fetch-Site: cross-site"], false),
        "403"
    );
    assert_eq!(
        status_of(&["-H", "Host: metadata.google.internal"], false),
        "200"
    );
    // The audit log names the uid behind each TCP client, learned from the kernel.
    if rustix::process::geteuid().is_root() {
        assert_eq!(status_of(&[], true), "200");
        let audit = vault.dir.join("audit.log");
        assert!(
            crate::support::eventually(std::time::Duration::from_secs(3), || {
                std::fs::read_to_string(&audit).is_ok_and(|log| log.contains("\"uid\":65534"))
            }),
            "{}",
            std::fs::read_to_string(&audit).unwrap_or_default()
        );
    }
    vault
        .run(&[
            "serve",
            "--metadata-addr",
            "0.0.0.0:1",
            "--metadata-account",
            "robot",
        ])
        .fails_with(1, "not a loopback address");
}

#[test]
fn one_git_helper_line_serves_every_configured_host_with_its_own_account() {
    // Two forges, each accepting only the tokens of its own provider, and a third nobody mapped.
    let (alpha, beta) = (
        crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope),
        crate::support::fake_oauth::start(OfflineRule::OfflineAccessScope),
    );
    let vault = TestVault::new(Some(&alpha));
    add_with_browser(&vault, &alpha, "alpha").ok();
    add_with_browser(&vault, &beta, "beta").ok();
    let forges: Vec<_> = [
        (&alpha, "alpha-forge"),
        (&beta, "beta-forge"),
        (&alpha, "unmapped"),
    ]
    .into_iter()
    .map(|(provider, dir)| {
        let root = vault.root.path().join(dir);
        std::fs::create_dir_all(&root).unwrap();
        crate::support::fake_forge::start(&root, provider)
    })
    .collect();
    std::fs::write(
        vault.dir.join("config.toml"),
        format!(
            "[git]\n\"127.0.0.1:{}\" = \"alpha\"\n\"127.0.0.1:{}\" = \"beta\"\n",
            forges[0].port, forges[1].port
        ),
    )
    .unwrap();
    let work = vault.root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let helper = format!(
        "credential.helper=!{} git-credential",
        env!("CARGO_BIN_EXE_vault")
    );
    let git = |directory: &std::path::Path, args: &[&str]| {
        git_in(&vault, directory, &[&["-c", &helper], args].concat())
    };
    assert!(git(&work, &["init", "--quiet"]).status.success());
    assert!(
        git(
            &work,
            &["commit", "--quiet", "--allow-empty", "-m", "first"]
        )
        .status
        .success()
    );
    for forge in &forges {
        assert!(
            git(&forge.root, &["init", "--quiet", "--bare", "project.git"])
                .status
                .success()
        );
    }
    let push = |forge: &crate::support::fake_forge::FakeForge| {
        git(
            &work,
            &[
                "push",
                "--quiet",
                &forge.url("project.git"),
                "HEAD:refs/heads/main",
            ],
        )
    };
    for forge in &forges[..2] {
        let pushed = push(forge);
        assert!(
            pushed.status.success(),
            "{}",
            String::from_utf8_lossy(&pushed.stderr)
        );
    }
    // The unmapped host gets no token (git asks its next helper; here none): refused.
    assert!(!push(&forges[2]).status.success());
}

/// The real git in `directory`, in the vault's environment, isolated from the machine's git
/// configuration and never prompting.
fn git_in(vault: &TestVault, directory: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut git = vault.program("git");
    git.current_dir(directory)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(["-c", "user.name=Test", "-c", "user.email=me@example.com"])
        .args(args);
    git.output().unwrap()
}
