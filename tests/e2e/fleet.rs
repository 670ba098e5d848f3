//! Fleet mode: the vault on a real PostgreSQL cluster the test starts. Commands find it through
//! `VAULT_DATABASE_URL`; every refresh is taken under the account's lease and committed fenced on
//! it, so processes racing for one rotating refresh token spend it once each time.

use std::process::Command;
use std::time::Duration;

use tokenvault::account::SecretKind;

use crate::support::fake_oauth::{self, FakeOAuth, Fault, OfflineRule};
use crate::support::postgres::Postgres;
use crate::support::{Run, TestVault, browser_add_args};

/// `vault ARGS` on `host` of the fleet whose database is `pg`.
fn fleet_command(vault: &TestVault, pg: &Postgres, host: &str, args: &[&str]) -> Command {
    let mut command = vault.command(args);
    command
        .env("VAULT_DATABASE_URL", pg.url())
        .env("VAULT_FLEET_HOST", host);
    command
}

fn fleet_run(vault: &TestVault, pg: &Postgres, args: &[&str]) -> Run {
    vault.run_command(fleet_command(vault, pg, "host-a", args), None)
}

/// A fleet vault with account `mail`, whose provider rotates refresh tokens and revokes the
/// whole grant on any reuse.
fn fleet_with_mail(fake: &FakeOAuth, pg: &Postgres) -> TestVault {
    let vault = TestVault::new(Some(fake));
    fleet_run(&vault, pg, &["fleet", "init"]).ok();
    let args = browser_add_args(&vault, fake, "mail", &["--timeout", "30"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fleet_run(&vault, pg, &args).ok();
    vault
}

/// The refresh token the fleet holds for `mail`, read with the fleet's own store.
fn stored_refresh_token(vault: &TestVault, pg: &Postgres) -> String {
    let fleet = tokenvault::store::FleetDb::new(&pg.url(), None, "host-a", None).unwrap();
    let unlock = tokenvault::keys::Unlock {
        source: Some(tokenvault::keys::KeySource::File(vault.key_file())),
        passphrase_file: None,
    };
    let store = tokenvault::store::PgStore::open(&fleet, &vault.dir, &unlock).unwrap();
    let account = store.account("mail").unwrap();
    store
        .secret(&account, SecretKind::RefreshToken)
        .unwrap()
        .unwrap()
        .expose()
        .clone()
}

#[test]
fn processes_racing_on_a_fleet_vault_spend_each_refresh_token_once() {
    let pg = Postgres::start();
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| {
        b.rotate = true;
        // Every ask needs a new token: every one is a refresh racing the others.
        b.access_lifetime = 0;
    });
    let vault = fleet_with_mail(&fake, &pg);
    assert!(
        vault.open_store().accounts().unwrap().is_empty(),
        "nothing is stored in the host's own vault"
    );
    let refreshes_before = fake.counters(|c| c.refresh_grants);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let mut runs = Vec::new();
            for _ in 0..6 {
                let mut command =
                    fleet_command(&vault, &pg, "host-a", &["token", "mail", "--no-daemon"]);
                command.stdout(std::process::Stdio::piped());
                runs.push(command.spawn().unwrap());
            }
            runs
        })
        .collect();
    let mut tokens = 0;
    for run in workers.into_iter().flatten() {
        let output = run.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let token = String::from_utf8(output.stdout).unwrap();
        assert!(fake.is_access_token(token.trim()), "{token}");
        tokens += 1;
    }
    // No refresh token was ever presented twice: the grant is alive and the fleet holds its
    // newest refresh token; each ask cost exactly one refresh.
    let (current, _, alive) = fake.newest_grant().unwrap();
    assert!(
        alive,
        "a refresh token was spent twice: the provider revoked the grant"
    );
    assert_eq!(stored_refresh_token(&vault, &pg), current);
    assert_eq!(
        fake.counters(|c| c.refresh_grants) - refreshes_before,
        tokens
    );

    let list = fleet_run(&vault, &pg, &["list"]);
    assert!(list.ok().stdout.contains("mail"), "{}", list.stdout);
    let status = fleet_run(&vault, &pg, &["status", "mail"]);
    assert!(status.ok().stdout.contains("active"), "{}", status.stdout);

    // The database holds ciphertext only: no planted secret, refresh or access token in its
    // files once everything is checkpointed.
    pg.checkpoint();
    let planted = vault.all_planted();
    for (path, bytes) in pg.data_files() {
        let text = String::from_utf8_lossy(&bytes);
        for secret in &planted {
            assert!(
                !text.contains(secret.as_str()),
                "{secret:?} in plaintext in {}",
                path.display()
            );
        }
    }
}

#[test]
fn fleet_mode_with_the_database_down_an_unknown_host_or_a_password_in_config() {
    let pg = Postgres::start();
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = fleet_with_mail(&fake, &pg);
    // The database down: a clear error with its own exit code, and nothing refreshed; back up,
    // the same command works without anything restarted.
    pg.stop_server();
    let refreshes = fake.counters(|c| c.refresh_grants);
    fleet_run(
        &vault,
        &pg,
        &["token", "mail", "--no-daemon", "--min-valid", "7200"],
    )
    .fails_with(5, "the fleet database");
    assert_eq!(fake.counters(|c| c.refresh_grants), refreshes);
    pg.start_server();
    fleet_run(&vault, &pg, &["token", "mail", "--no-daemon"]).ok();
    // A second `fleet init` on the same database changes nothing.
    fleet_run(&vault, &pg, &["fleet", "init"]).fails_with(1, "already exists");
    // A host that was never enrolled has no wrapped data key.
    let stranger = fleet_command(&vault, &pg, "host-z", &["list"]);
    vault
        .run_command(stranger, None)
        .fails_with(1, "\"host-z\" is not enrolled");
    // A password in config.toml's database address is refused: the file may be readable.
    std::fs::write(
        vault.dir.join("config.toml"),
        format!(
            "[fleet]\ndatabase = \"postgres://vault:hunter2@127.0.0.1:{}/postgres\"\n",
            pg.port
        ),
    )
    .unwrap();
    vault
        .run(&["list"])
        .fails_with(1, "put the password in a 0600 file");
}

/// A database that wants a password. Without one, the error says where to put it; libpq's own
/// sources work as for psql (`PGPASSWORD`; `~/.pgpass`, refused while others can read it), and so
/// does `[fleet] password_file` (refused likewise); a wrong one is named as such.
#[test]
fn the_database_password_comes_from_password_file_pgpass_or_pgpassword() {
    use std::os::unix::fs::PermissionsExt;

    use crate::support::write_private;
    const PASSWORD: &str = "db-Secret-8f3a:x";
    let pg = Postgres::start_with_password(PASSWORD);
    let vault = TestVault::new(None);
    let home = vault.root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let pgpass = home.join(".pgpass");
    let with = |env: &[(&str, &str)], args: &[&str]| {
        let mut command = fleet_command(&vault, &pg, "host-a", args);
        command.envs(env.iter().copied());
        vault.run_command(command, None)
    };
    with(&[], &["fleet", "init"]).fails_with(5, "or in ~/.pgpass (PGPASSFILE)");
    with(&[("PGPASSWORD", PASSWORD)], &["fleet", "init"]).ok();
    // An address without a user means PGUSER, else this user (root here, no role), as for psql.
    let userless = format!("postgres://127.0.0.1:{}/postgres", pg.port);
    let env = [
        ("VAULT_DATABASE_URL", userless.as_str()),
        ("PGPASSWORD", PASSWORD),
    ];
    with(&env, &["list"]).fails_with(5, "password authentication failed for user \"root\"");
    with(&[env[0], env[1], ("PGUSER", "vault")], &["list"]).ok();

    // ~/.pgpass, its first matching line (the colon in the password escaped).
    let lines = format!(
        "# psql's\n*:1:*:*:not-this-port\n127.0.0.1:{}:postgres:vault:{}\n*:*:*:*:not-the-first-match\n",
        pg.port,
        PASSWORD.replace(':', "\\:")
    );
    std::fs::write(&pgpass, lines).unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    with(&[], &["list"]).fails_with(1, "chmod 600");
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    with(&[], &["list"]).ok();
    // A dotfile manager's symlink to a private file of the user's is followed.
    let kept = vault.root.path().join("dotfiles-pgpass");
    std::fs::rename(&pgpass, &kept).unwrap();
    std::os::unix::fs::symlink(&kept, &pgpass).unwrap();
    with(&[], &["list"]).ok();
    let doctor = with(&[], &["doctor"]);
    let from = format!(
        "opens as host host-a, with this host's master key (password from {})",
        pgpass.display()
    );
    assert!(doctor.stdout.contains(&from), "{}", doctor.stdout);
    // PGPASSFILE names another file; a wrong password there is reported as such.
    let other = vault.root.path().join("other.pgpass");
    write_private(&other, "*:*:*:*:wrong\n");
    with(&[("PGPASSFILE", other.to_str().unwrap())], &["list"]).fails_with(
        5,
        "password authentication failed for user \"vault\" (28P01); check the password",
    );

    // config.toml's database with a password_file (which wins over ~/.pgpass).
    std::fs::remove_file(&pgpass).unwrap();
    let password_file = vault.root.path().join("db.password");
    write_private(&password_file, &format!("{PASSWORD}\n"));
    std::fs::write(
        vault.dir.join("config.toml"),
        format!(
            "[fleet]\ndatabase = \"{}\"\nhost = \"host-a\"\npassword_file = \"{}\"\n",
            pg.url(),
            password_file.display()
        ),
    )
    .unwrap();
    vault.run(&["list"]).ok();
    let doctor = vault.run(&["doctor"]);
    assert!(
        doctor
            .stdout
            .contains("(password from [fleet] password_file)"),
        "{}",
        doctor.stdout
    );
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    vault.run(&["list"]).fails_with(1, "chmod 600");
    // The address's own password comes first (the password file is not even read).
    let with_password = format!(
        "postgres://vault:{}@127.0.0.1:{}/postgres",
        PASSWORD.replace(':', "%3A"),
        pg.port
    );
    let doctor = with(&[("VAULT_DATABASE_URL", &with_password)], &["doctor"]);
    assert!(
        doctor.stdout.contains("(password from the address)"),
        "{}",
        doctor.stdout
    );
}

/// `vault fleet join` on `host` of `vault` (its own master key), spawned: returns the process
/// and the join code it shows.
fn start_join(vault: &TestVault, pg: &Postgres, host: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut command = fleet_command(vault, pg, host, &["fleet", "join", "--timeout", "60"]);
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let code = first
        .strip_prefix("Join code (one-time, secret): ")
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    // Keep reading so the joining process never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, code)
}

/// `vault fleet admit host` on host-a of `vault`, typing `code`.
fn admit(vault: &TestVault, pg: &Postgres, host: &str, code: &str) -> Run {
    vault.run_command(
        fleet_command(vault, pg, "host-a", &["fleet", "admit", host]),
        Some(code),
    )
}

#[test]
fn a_second_host_with_its_own_master_key_joins_shares_the_lease_and_can_be_removed() {
    let pg = Postgres::start();
    let fake = rotating_provider(0);
    let first = fleet_with_mail(&fake, &pg);
    // Host B: another machine's vault directory and another master key.
    let second = TestVault::new(Some(&fake));

    // A wrong join code admits nothing; the right one does (typed in upper case, with spaces).
    let (joining, code) = start_join(&second, &pg, "host-b");
    admit(
        &first,
        &pg,
        "host-b",
        "0000-1111-2222-3333-4444-5555-6666-7777",
    )
    .fails_with(1, "the join code does not match host \"host-b\"'s request");
    admit(&first, &pg, "host-b", "12345").fails_with(1, "a join code is 32 hexadecimal digits");
    let status = fleet_run(&first, &pg, &["fleet", "status"]);
    assert!(
        status.ok().stdout.contains("waiting to join host-b"),
        "{}",
        status.stdout
    );
    admit(
        &first,
        &pg,
        "host-b",
        &code.replace('-', " ").to_uppercase(),
    )
    .ok();
    let joined = joining.wait_with_output().unwrap();
    assert!(joined.status.success(), "{joined:?}");

    // Both hosts race for one rotating refresh token: each is spent once.
    let refreshes_before = fake.counters(|c| c.refresh_grants);
    let runs: Vec<_> = (0..12)
        .map(|i| {
            let (vault, host) = if i % 2 == 0 {
                (&first, "host-a")
            } else {
                (&second, "host-b")
            };
            let mut command = fleet_command(vault, &pg, host, &["token", "mail", "--no-daemon"]);
            command.stdout(std::process::Stdio::piped());
            command.spawn().unwrap()
        })
        .collect();
    for run in runs {
        let output = run.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
        assert!(fake.is_access_token(String::from_utf8(output.stdout).unwrap().trim()));
    }
    let (current, _, alive) = fake.newest_grant().unwrap();
    assert!(alive, "a refresh token was spent twice across hosts");
    assert_eq!(stored_refresh_token(&first, &pg), current);
    assert_eq!(fake.counters(|c| c.refresh_grants) - refreshes_before, 12);

    // Host B's master key opens nothing of host A's, and the other way round: each has its own
    // wrapped copy of the data key.
    let b_with_a_key = fleet_command(&first, &pg, "host-b", &["list"]);
    first
        .run_command(b_with_a_key, None)
        .fails_with(6, "does not open this vault");

    // Removed, host B can no longer open the fleet; host A can't remove itself.
    fleet_run(&first, &pg, &["fleet", "remove", "host-a"]).fails_with(1, "is this host");
    fleet_run(&first, &pg, &["fleet", "remove", "host-b"]).ok();
    let after = fleet_command(&second, &pg, "host-b", &["token", "mail", "--no-daemon"]);
    second
        .run_command(after, None)
        .fails_with(1, "\"host-b\" is not enrolled");
}

/// An attacker with write access to the database while a host joins: swapping the joining
/// host's key gets no admission, and answering in the admitter's place — their own one-time key,
/// a data key of their own, sealed exactly as an admitter without the join code would — gets
/// nothing stored on the joining host.
#[test]
fn a_database_writer_can_neither_swap_the_joining_key_nor_answer_the_join() {
    let pg = Postgres::start();
    let fake = rotating_provider(0);
    let first = fleet_with_mail(&fake, &pg);
    let second = TestVault::new(Some(&fake));
    let mut db = pg.client();
    let vault_id: String = db
        .query_one("SELECT value FROM fleet_meta WHERE key = 'vault_id'", &[])
        .unwrap()
        .get(0);

    let (mut joining, code) = start_join(&second, &pg, "host-b");
    let attacker = X25519Key::generate();
    db.execute(
        "UPDATE joins SET public_key = $1 WHERE host = 'host-b'",
        &[&attacker.public],
    )
    .unwrap();
    admit(&first, &pg, "host-b", &code).fails_with(1, "does not match host \"host-b\"'s request");
    let sealed: Option<Vec<u8>> = db
        .query_one(
            "SELECT sealed_data_key FROM joins WHERE host = 'host-b'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(sealed.is_none(), "nothing was sealed to the swapped key");
    joining.kill().unwrap();
    joining.wait().unwrap();

    let key_before = std::fs::read(second.key_file()).ok();
    let (joining, _code) = start_join(&second, &pg, "host-b");
    let joiner_key: Vec<u8> = db
        .query_one("SELECT public_key FROM joins WHERE host = 'host-b'", &[])
        .unwrap()
        .get(0);
    let attacker = X25519Key::generate();
    let attacker_public = attacker.public.clone();
    let forged = attacker.seal_without_code(&vault_id, &joiner_key, &[0x42; 32]);
    db.execute(
        "UPDATE joins SET admitted_by = 'host-a', admitter_key = $1, key_version = 1,
             sealed_data_key = $2 WHERE host = 'host-b'",
        &[&attacker_public, &forged],
    )
    .unwrap();
    let joined = joining.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&joined.stderr);
    assert!(!joined.status.success(), "{stderr}");
    assert!(
        stderr.contains("it was not made with the code shown here"),
        "{stderr}"
    );
    let enrolled: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM hosts WHERE host = 'host-b')
                  + (SELECT count(*) FROM joins WHERE host = 'host-b')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(enrolled, 0, "no host row, no request left");
    assert_eq!(
        std::fs::read(second.key_file()).ok(),
        key_before,
        "the master key file is as it was"
    );
}

/// `vault fleet remove` then `vault rekey`: a new data key for the whole fleet, delivered to the
/// hosts still enrolled (a running daemon takes it by itself), while the removed host — even with
/// its old rows put back by a database writer — opens nothing sealed since. A host key swapped in
/// the database stops the rekey before anything changes.
#[test]
fn a_fleet_rekey_reaches_the_enrolled_hosts_and_shuts_out_a_removed_one() {
    let pg = Postgres::start();
    let fake = rotating_provider(3);
    let (first, second) = two_hosts(&fake, &pg);
    let third = TestVault::new(Some(&fake));
    let (joining, code) = start_join(&third, &pg, "host-c");
    admit(&first, &pg, "host-c", &code).ok();
    assert!(joining.wait_with_output().unwrap().status.success());
    let on_b = serve_as(&second, &pg, "host-b");
    assert_eq!(on_b.get("/v1/token/mail").status, 200);
    let mut db = pg.client();
    let key_version = |db: &mut postgres::Client| -> String {
        db.query_one(
            "SELECT value FROM fleet_meta WHERE key = 'key_version'",
            &[],
        )
        .unwrap()
        .get(0)
    };

    let genuine: Vec<u8> = db
        .query_one("SELECT public_key FROM hosts WHERE host = 'host-b'", &[])
        .unwrap()
        .get(0);
    db.execute(
        "UPDATE hosts SET public_key = $1 WHERE host = 'host-b'",
        &[&X25519Key::generate().public],
    )
    .unwrap();
    let new_key = first.root.path().join("fleet-a.key");
    let new_key = new_key.to_str().unwrap();
    fleet_run(&first, &pg, &["rekey", "--new-key-file", new_key])
        .fails_with(1, "host(s) host-b have no host key this fleet vouches for");
    assert_eq!(key_version(&mut db), "1", "nothing changed");
    db.execute(
        "UPDATE hosts SET public_key = $1 WHERE host = 'host-b'",
        &[&genuine],
    )
    .unwrap();

    // host-c leaves; a database writer keeps its rows, to put them back later.
    let kept = db
        .query_one(
            "SELECT h.key_source, h.master_version, k.wrapped FROM hosts h
             JOIN host_keys k USING (host) WHERE host = 'host-c'",
            &[],
        )
        .unwrap();
    fleet_run(&first, &pg, &["fleet", "remove", "host-c"]).ok();
    // host-b's daemon sleeps through the rekey, and a command on host-b takes the new key first.
    crate::support::daemon::signal(&on_b.child, rustix::process::Signal::STOP);
    let refreshes = fake.counters(|c| c.refresh_grants);
    let rekeyed = fleet_run(&first, &pg, &["rekey", "--new-key-file", new_key]);
    assert!(
        rekeyed.ok().stdout.contains("Delivered to host-b"),
        "{}",
        rekeyed.stdout
    );
    assert_eq!(key_version(&mut db), "2");
    let left: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM secrets WHERE key_version <> 2)
                  + (SELECT count(*) FROM host_keys WHERE host = 'host-a' AND key_version <> 2)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "everything is under the new key");

    // host-a opens with its new master key, and no longer with the old one.
    let mut with_new_key = fleet_command(
        &first,
        &pg,
        "host-a",
        &["--key-file", new_key, "token", "mail", "--no-daemon"],
    );
    with_new_key.env_remove("VAULT_MASTER_KEY");
    let token = first.run_command(with_new_key, None);
    assert!(fake.is_access_token(token.ok().stdout.trim()));
    fleet_run(&first, &pg, &["token", "mail", "--no-daemon"]).fails_with(6, "does not open");

    second
        .run_command(fleet_command(&second, &pg, "host-b", &["list"]), None)
        .ok();
    crate::support::daemon::signal(&on_b.child, rustix::process::Signal::CONT);
    // host-b's daemon took the new key by itself: it goes on refreshing 3-second tokens.
    std::thread::sleep(std::time::Duration::from_secs(8));
    let asked_at = std::time::Instant::now();
    let answer = on_b.get("/v1/token/mail?min_valid=1");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let token = answer.json()["access_token"].as_str().unwrap().to_owned();
    assert!(fake.was_live_access_token(&token, asked_at));
    assert!(fake.counters(|c| c.refresh_grants) > refreshes + 1);
    let b_versions = key_versions_of(&mut db, "host-b");
    assert_eq!(b_versions, [2], "host-b keeps only the new key");
    let (_, _, alive) = fake.newest_grant().unwrap();
    assert!(alive);

    // host-c's rows put back: it holds no copy of the new key; told the fleet is still on the
    // old one, it opens nothing sealed since.
    db.execute(
        "INSERT INTO hosts (host, key_source, master_version) VALUES ('host-c', $1, $2)",
        &[&kept.get::<_, String>(0), &kept.get::<_, i64>(1)],
    )
    .unwrap();
    db.execute(
        "INSERT INTO host_keys (host, key_version, wrapped) VALUES ('host-c', 1, $1)",
        &[&kept.get::<_, Vec<u8>>(2)],
    )
    .unwrap();
    let as_c = || {
        third.run_command(
            fleet_command(&third, &pg, "host-c", &["token", "mail", "--no-daemon"]),
            None,
        )
    };
    as_c().fails_with(6, "holds no copy of the fleet's current data key");
    db.execute(
        "UPDATE fleet_meta SET value = '1' WHERE key = 'key_version'",
        &[],
    )
    .unwrap();
    let run = as_c();
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(!fake.is_access_token(run.stdout.trim()));

    // A database writer "rekeys" to a data key of its own, sealed to host-b's real public key as
    // a genuine delivery is — but it cannot tag it with the key host-b holds. host-b refuses it
    // (else it would seal every new token under the writer's key) and keeps the key it has.
    let vault_id: String = db
        .query_one("SELECT value FROM fleet_meta WHERE key = 'vault_id'", &[])
        .unwrap()
        .get(0);
    let b_public: Vec<u8> = db
        .query_one("SELECT public_key FROM hosts WHERE host = 'host-b'", &[])
        .unwrap()
        .get(0);
    let (ephemeral_key, sealed) =
        X25519Key::generate().deliver(&vault_id, "host-b", 3, &b_public, &[0x42; 32]);
    db.execute(
        "UPDATE fleet_meta SET value = '3' WHERE key = 'key_version'",
        &[],
    )
    .unwrap();
    db.execute(
        "INSERT INTO key_deliveries (host, key_version, from_version, ephemeral_key, sealed, mac)
         VALUES ('host-b', 3, 2, $1, $2, $3)",
        &[&ephemeral_key, &sealed, &vec![0u8; 32]],
    )
    .unwrap();
    second
        .run_command(fleet_command(&second, &pg, "host-b", &["list"]), None)
        .fails_with(6, "holds no copy of the fleet's current data key");
    let b_versions = key_versions_of(&mut db, "host-b");
    assert_eq!(
        b_versions,
        [2],
        "host-b took nothing from the forged delivery"
    );
}

/// The data-key versions `host` holds a copy of.
fn key_versions_of(db: &mut postgres::Client, host: &str) -> Vec<i64> {
    db.query(
        "SELECT key_version FROM host_keys WHERE host = $1",
        &[&host],
    )
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// The attacker's one-time X25519 key.
struct X25519Key {
    private: ring::agreement::EphemeralPrivateKey,
    public: Vec<u8>,
}

impl X25519Key {
    fn generate() -> X25519Key {
        let rng = ring::rand::SystemRandom::new();
        let private =
            ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::X25519, &rng).unwrap();
        let public = private.compute_public_key().unwrap().as_ref().to_vec();
        X25519Key { private, public }
    }

    /// `data_key` sealed to the joining host as the admission did before join codes: a key from
    /// the X25519 agreement and the public transcript alone, which anyone can compute.
    fn seal_without_code(self, vault_id: &str, joiner_key: &[u8], data_key: &[u8; 32]) -> Vec<u8> {
        let transcript = format!(
            "tokenvault fleet admission|vault={vault_id}|host=host-b|joiner={}|admitter={}",
            hex(joiner_key),
            hex(&self.public)
        );
        let aad = format!("tokenvault fleet admission|vault={vault_id}|host=host-b|key=1");
        self.seal_to(
            joiner_key,
            b"tokenvault fleet admission",
            &transcript,
            &aad,
            data_key,
        )
    }

    /// `data_key` sealed to `host`'s public key as a rekey's delivery of key `version` is
    /// (untagged: the tag needs the fleet's data key). Returns (one-time public key, sealed).
    fn deliver(
        self,
        vault_id: &str,
        host: &str,
        version: i64,
        recipient: &[u8],
        data_key: &[u8; 32],
    ) -> (Vec<u8>, Vec<u8>) {
        let info = format!(
            "tokenvault fleet key delivery|vault={vault_id}|host={host}|key={version}|ephemeral={}|recipient={}",
            hex(&self.public),
            hex(recipient)
        );
        let aad =
            format!("tokenvault fleet key delivery|vault={vault_id}|host={host}|key={version}");
        let public = self.public.clone();
        let sealed = self.seal_to(
            recipient,
            b"tokenvault fleet key delivery",
            &info,
            &aad,
            data_key,
        );
        (public, sealed)
    }

    /// AES-256-GCM (nonce first) under HKDF-SHA256(`salt`, X25519 with `peer`, `info`).
    fn seal_to(
        self,
        peer: &[u8],
        salt: &[u8],
        info: &str,
        aad: &str,
        data_key: &[u8; 32],
    ) -> Vec<u8> {
        use ring::{aead, agreement, hkdf};
        let mut key = [0u8; 32];
        agreement::agree_ephemeral(
            self.private,
            &agreement::UnparsedPublicKey::new(&agreement::X25519, peer),
            |shared| {
                hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
                    .extract(shared)
                    .expand(&[info.as_bytes()], hkdf::HKDF_SHA256)
                    .unwrap()
                    .fill(&mut key)
                    .unwrap()
            },
        )
        .unwrap();
        let sealing =
            aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &key).unwrap());
        let nonce = [9u8; 12];
        let mut blob = data_key.to_vec();
        sealing
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad.as_bytes()),
                &mut blob,
            )
            .unwrap();
        [nonce.as_slice(), &blob].concat()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_fleet_database_is_reached_over_verified_tls() {
    let (pg, ca) = Postgres::start_tls();
    let vault = TestVault::new(None);
    let over = |query: &str| {
        let mut command = vault.command(&["fleet", "init"]);
        command.env(
            "VAULT_DATABASE_URL",
            format!("postgres://vault@localhost:{}/postgres?{query}", pg.port),
        );
        vault.run_command(command, None)
    };
    // The server takes TLS only: plain text is refused, so what works below is TLS.
    over("sslmode=disable").fails_with(5, "the fleet database");
    // A certificate that does not chain to the CA given (or to the public roots, with none
    // given) is refused before anything is sent, and said to be that, not a lost connection.
    let other = pg.unrelated_ca();
    let untrusted = "the fleet database's certificate is not one this host trusts";
    over(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other.display()
    ))
    .fails_with(5, untrusted);
    let public_roots_only = over("sslmode=verify-full");
    public_roots_only.fails_with(5, untrusted);
    assert!(
        !public_roots_only.stderr.contains("was lost"),
        "{}",
        public_roots_only.stderr
    );
    // The right CA, but an address the certificate is not for (it is for localhost).
    let mut by_address = vault.command(&["fleet", "init"]);
    by_address.env(
        "VAULT_DATABASE_URL",
        format!(
            "postgres://vault@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
            pg.port,
            ca.display()
        ),
    );
    vault
        .run_command(by_address, None)
        .fails_with(5, "use the host name the certificate is for");
    over(&format!("sslmode=verify-full&sslrootcert={}", ca.display())).ok();
    // The same through config.toml's ca_file, with the host name checked.
    std::fs::write(
        vault.dir.join("config.toml"),
        format!(
            "[fleet]\ndatabase = \"postgres://vault@localhost:{}/postgres?sslmode=verify-full\"\nca_file = \"{}\"\n",
            pg.port,
            ca.display()
        ),
    )
    .unwrap();
    let listed = vault.run(&["list"]);
    assert!(
        listed.ok().stdout.contains("No accounts yet"),
        "{}",
        listed.stdout
    );
}

/// A provider that rotates refresh tokens on every refresh (any reuse kills the grant), its
/// access tokens living `lifetime` seconds.
fn rotating_provider(lifetime: u64) -> FakeOAuth {
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| {
        b.rotate = true;
        b.access_lifetime = lifetime;
    });
    fake
}

/// The daemons of host-a (`first`) and host-b (`second`).
fn serve_both(
    first: &TestVault,
    second: &TestVault,
    pg: &Postgres,
) -> [crate::support::daemon::Daemon; 2] {
    [
        serve_as(first, pg, "host-a"),
        serve_as(second, pg, "host-b"),
    ]
}

/// A fleet vault with account `mail` on host-a, and host-b enrolled with its own master key.
fn two_hosts(fake: &FakeOAuth, pg: &Postgres) -> (TestVault, TestVault) {
    let first = fleet_with_mail(fake, pg);
    let second = TestVault::new(Some(fake));
    enroll_second_host(&first, &second, pg);
    (first, second)
}

/// Uids differ between hosts, so a fleet grants by name, on every host or on one, and each
/// host's daemon resolves the name itself; a grant made on one host reaches a running daemon on
/// another without a restart.
#[test]
fn fleet_grants_name_a_user_for_every_host_or_one() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client as nobody");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let pg = Postgres::start();
    let fake = rotating_provider(0);
    let (first, second) = two_hosts(&fake, &pg);
    let daemons = [(&first, "host-a"), (&second, "host-b")].map(|(vault, host)| {
        std::fs::set_permissions(vault.root.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        serve_with(vault, &pg, host, &["--socket-group", "nogroup"])
    });
    let [on_a, on_b] = daemons.each_ref().map(|daemon| {
        let socket = daemon.socket.clone();
        move || crate::support::daemon::get_as_nobody(&socket, "/v1/token/mail").0
    });
    assert_eq!((on_a(), on_b()), (403, 403));

    // A uid is stored as this host's name for it; narrowed to host-b, it grants nothing on A.
    let granted = fleet_run(
        &first,
        &pg,
        &["grant", "mail", "--uid", "65534", "--host", "host-b"],
    );
    assert!(
        granted
            .ok()
            .stdout
            .contains("user \"nobody\" on host host-b may now fetch"),
        "{}",
        granted.stdout
    );
    let settle = || std::thread::sleep(std::time::Duration::from_millis(2500));
    settle();
    assert_eq!((on_a(), on_b()), (403, 200));
    fleet_run(&first, &pg, &["grant", "mail", "--uid", "nobody"]).ok();
    settle();
    assert_eq!((on_a(), on_b()), (200, 200));
    fleet_run(&first, &pg, &["revoke-grant", "mail", "--uid", "nobody"]).ok();
    settle();
    assert_eq!((on_a(), on_b()), (403, 200), "the host-b grant stays");

    // A database writer copies the host-b grant for every host: the row's MAC does not cover
    // that, so it grants nothing anywhere; the genuine one still does.
    pg.client()
        .execute(
            "INSERT INTO grants (account_id, kind, name, host, mac)
             SELECT account_id, kind, name, '', mac FROM grants WHERE host = 'host-b'",
            &[],
        )
        .unwrap();
    settle();
    assert_eq!(
        (on_a(), on_b()),
        (403, 200),
        "a forged grant row grants nothing"
    );

    fleet_run(&first, &pg, &["grant", "mail", "--uid", "4242424"])
        .fails_with(1, "no user \"4242424\" on this host");
    fleet_run(
        &first,
        &pg,
        &["grant", "mail", "--uid", "nobody", "--host", "host-z"],
    )
    .fails_with(1, "\"host-z\" is not enrolled");
    fleet_run(&first, &pg, &["grant", "nothing", "--uid", "nobody"]).fails_with(1, "nothing");
}

/// `vault set-client-secret` on a fleet: set on one host, used by every host; retired once the
/// newest works alone; its expiry recorded fleet-wide.
#[test]
fn a_client_secret_rotates_across_the_fleet() {
    use crate::support::write_private;
    let pg = Postgres::start();
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let (first, second) = two_hosts(&fake, &pg);
    let on_b =
        |args: &[&str]| second.run_command(fleet_command(&second, &pg, "host-b", args), None);
    let accepts = |secrets: &[&str]| {
        let secrets = secrets.iter().map(|secret| secret.to_string()).collect();
        fake.configure(|b| b.client_secrets = secrets);
    };
    accepts(&[fake_oauth::CLIENT_SECRET, "cs-NEW-secret-1"]);
    let file = first.root.path().join("new-secret");
    write_private(&file, "cs-NEW-secret-1\n");
    let set = fleet_run(
        &first,
        &pg,
        &[
            "set-client-secret",
            "mail",
            "--client-secret-file",
            file.to_str().unwrap(),
        ],
    );
    assert!(set.ok().stdout.contains("works"), "{}", set.stdout);

    // The new secret not in force at the provider yet (it propagates slowly): host-b falls back
    // to the previous one, which the fleet keeps until it is retired.
    accepts(&[fake_oauth::CLIENT_SECRET]);
    on_b(&["validate", "mail"]).ok();

    // The old secret deleted at the provider: host-b already uses the new one.
    accepts(&["cs-NEW-secret-1"]);
    let refused = fake.counters(|c| c.client_rejections);
    on_b(&["validate", "mail"]).ok();
    fleet_run(&first, &pg, &["set-client-secret", "mail", "--retire-old"]).ok();
    on_b(&["set-client-secret", "mail", "--retire-old"]).fails_with(1, "no previous client secret");
    assert_eq!(fake.counters(|c| c.client_rejections), refused);

    on_b(&[
        "set-client-secret",
        "mail",
        "--current",
        "--expires",
        "2999-01-01",
    ])
    .ok();
    let details = fleet_run(&first, &pg, &["status", "mail"]);
    assert!(
        details.ok().stdout.contains("secret expires   2999-01-01"),
        "{}",
        details.stdout
    );
    pg.checkpoint();
    for (path, bytes) in pg.data_files() {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("cs-NEW-secret-1") && !text.contains(fake_oauth::CLIENT_SECRET),
            "a client secret in plaintext in {}",
            path.display()
        );
    }
}

/// `vault doctor` on a fleet host looks at the fleet: its database opens as this host, the
/// notifications arrive, the clocks agree, every host's key is vouched for.
#[test]
fn doctor_examines_the_fleet_on_a_fleet_host() {
    let pg = Postgres::start();
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let (first, _second) = two_hosts(&fake, &pg);
    let healthy = fleet_run(&first, &pg, &["doctor"]);
    for line in [
        "opens as host host-a",
        "notifications reach this host",
        "of the database's",
        "every enrolled host has a key the fleet vouches for",
        "1 account(s), none waiting for you",
    ] {
        assert!(healthy.stdout.contains(line), "{line}: {}", healthy.stdout);
    }
    healthy.ok();
    // A host key tampered with in the database: a rekey would stop there, and doctor says so.
    pg.client()
        .execute(
            "UPDATE hosts SET public_key_mac = NULL WHERE host = 'host-b'",
            &[],
        )
        .unwrap();
    let tampered = fleet_run(&first, &pg, &["doctor"]);
    tampered.fails_with(1, "1 problem(s) found");
    assert!(
        tampered.stdout.contains("host(s) host-b have no key"),
        "{}",
        tampered.stdout
    );
    // A host that is not enrolled: the fleet does not open, and doctor names the fix.
    let stranger = fleet_command(&first, &pg, "host-z", &["doctor"]);
    let run = first.run_command(stranger, None);
    assert!(
        run.stdout.contains("\"host-z\" is not enrolled"),
        "{}",
        run.stdout
    );
}

/// A fleet rekey that fails removes the master key it made (it opens nothing); one killed before
/// its commit leaves its key file behind, and `vault doctor` names it.
#[test]
fn a_fleet_rekey_that_does_not_commit_leaves_no_key_or_doctor_names_it() {
    let pg = Postgres::start();
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = fleet_with_mail(&fake, &pg);
    let mut db = pg.client();
    let new_key = vault.root.path().join("fleet-next.key");
    let rekey = || {
        fleet_command(
            &vault,
            &pg,
            "host-a",
            &["rekey", "--new-key-file", new_key.to_str().unwrap()],
        )
    };

    // A secret altered in the database: the rekey stops at it, and takes its new key back.
    let (account, kind, sealed): (i64, String, Vec<u8>) = db
        .query_one("SELECT account_id, kind, sealed FROM secrets LIMIT 1", &[])
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .unwrap();
    let mut altered = sealed.clone();
    *altered.last_mut().unwrap() ^= 1;
    let put = |db: &mut postgres::Client, sealed: &Vec<u8>| {
        db.execute(
            "UPDATE secrets SET sealed = $3 WHERE account_id = $1 AND kind = $2",
            &[&account, &kind, sealed],
        )
        .unwrap();
    };
    put(&mut db, &altered);
    vault
        .run_command(rekey(), None)
        .fails_with(1, "failed to open");
    assert!(!new_key.exists(), "the failed rekey's key file is gone");
    put(&mut db, &sealed);
    let pending: Option<String> = db
        .query_one("SELECT rekey_pending FROM hosts WHERE host = 'host-a'", &[])
        .unwrap()
        .get(0);
    assert_eq!(pending, None);

    // Killed while it waits for a lease another host holds: its key file stays, named by doctor.
    pg.kill_while_waiting_for_leases(rekey(), || new_key.exists());
    let leftover = format!(
        "an interrupted vault rekey left the key file {}",
        new_key.display()
    );
    let doctor = fleet_run(&vault, &pg, &["doctor"]);
    assert!(doctor.stdout.contains(&leftover), "{}", doctor.stdout);

    // Once it is deleted, a rekey commits, and doctor has nothing to name.
    std::fs::remove_file(&new_key).unwrap();
    vault.run_command(rekey(), None).ok();
    // From now on this host's master key is the new file, as recorded by the rekey.
    let with_new_key = |args: &[&str]| {
        let mut command = fleet_command(&vault, &pg, "host-a", args);
        command.env_remove("VAULT_MASTER_KEY");
        vault.run_command(command, None)
    };
    let doctor = with_new_key(&["doctor"]);
    assert!(
        doctor.stdout.contains("opens as host host-a"),
        "{}",
        doctor.stdout
    );
    assert!(
        !doctor.stdout.contains("interrupted vault rekey"),
        "{}",
        doctor.stdout
    );
    let token = with_new_key(&["token", "mail", "--no-daemon"]);
    assert!(fake.is_access_token(token.ok().stdout.trim()));
}

/// Rotating a service account's key on a fleet: `vault rotate` on one host, the other host's
/// tokens signed with the new key; one rotation at a time fleet-wide; and with `--rotate-every`,
/// two daemons rotate a due key once between them.
#[test]
fn a_fleet_rotates_a_service_account_key_once() {
    use crate::support::fake_keys::{self, Op};
    let pg = Postgres::start();
    let fake = fake_oauth::start(OfflineRule::Google);
    let iam = fake_keys::start_iam(&fake);
    let first = TestVault::new(Some(&fake));
    fleet_run(&first, &pg, &["fleet", "init"]).ok();
    let key = crate::support::service_account_key_file(&first, &fake);
    fleet_run(
        &first,
        &pg,
        &[
            "add-account",
            "robot",
            "--service-account",
            key.to_str().unwrap(),
            "--scope",
            "https://www.googleapis.com/auth/drive.readonly",
            "--key-api-url",
            &iam.base,
        ],
    )
    .ok();
    let second = TestVault::new(Some(&fake));
    enroll_second_host(&first, &second, &pg);
    let fresh_on_b = || {
        let run = second.run_command(
            fleet_command(
                &second,
                &pg,
                "host-b",
                &["token", "robot", "--no-daemon", "--min-valid", "7200"],
            ),
            None,
        );
        assert!(fake.is_access_token(run.ok().stdout.trim()));
    };

    fleet_run(&first, &pg, &["rotate", "robot"]).ok();
    assert_eq!(iam.calls(), [Op::List, Op::Create, Op::Delete]);
    assert_eq!(iam.key_ids().len(), 1);
    fresh_on_b();

    // Another host's rotation under way: a second one changes nothing anywhere.
    let mut db = pg.client();
    db.execute(
        "UPDATE accounts SET rotation_until = clock_timestamp() + interval '1 minute'
         WHERE name = 'robot'",
        &[],
    )
    .unwrap();
    fleet_run(&first, &pg, &["rotate", "robot"]).fails_with(
        1,
        "another rotation of account \"robot\"'s key is under way",
    );
    assert_eq!(iam.calls().len(), 3);
    db.execute("UPDATE accounts SET rotation_until = NULL", &[])
        .unwrap();

    // Due by its age: both daemons look, one rotates.
    fleet_run(&first, &pg, &["schedule", "robot", "--rotate-every", "1d"]).ok();
    db.execute(
        "UPDATE accounts SET key_created_at = key_created_at - 172800 WHERE name = 'robot'",
        &[],
    )
    .unwrap();
    let daemons = serve_both(&first, &second, &pg);
    assert!(crate::support::eventually(
        std::time::Duration::from_secs(30),
        || iam.calls().len() >= 6
    ));
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        iam.calls()[3..],
        [Op::List, Op::Create, Op::Delete],
        "one rotation between two daemons"
    );
    drop(daemons);
    assert_eq!(iam.key_ids().len(), 1);
    fresh_on_b();
}

/// Enrolls `second` as host-b of the fleet `first` (host-a) created.
fn enroll_second_host(first: &TestVault, second: &TestVault, pg: &Postgres) {
    let (joining, code) = start_join(second, pg, "host-b");
    admit(first, pg, "host-b", &code).ok();
    assert!(joining.wait_with_output().unwrap().status.success());
}

#[test]
fn two_daemons_on_one_fleet_refresh_ahead_once_per_expiry() {
    let pg = Postgres::start();
    let fake = rotating_provider(10);
    let (first, second) = two_hosts(&fake, &pg);
    let daemons = serve_both(&first, &second, &pg);
    let before = fake.counters(|c| c.refresh_grants);
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(22) {
        for daemon in &daemons {
            let answer = daemon.get("/v1/token/mail?min_valid=1");
            assert_eq!(answer.status, 200, "{}", answer.body);
            let token = answer.json()["access_token"].as_str().unwrap().to_owned();
            assert!(fake.is_access_token(&token));
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let refreshes = fake.counters(|c| c.refresh_grants) - before;
    let status = fleet_run(&first, &pg, &["fleet", "status"]);
    for host in ["host-a", "host-b"] {
        assert!(
            status.ok().stdout.contains(&format!("{host}: daemon seen")),
            "{}",
            status.stdout
        );
    }
    // Each token lives 10 s and is refreshed ahead 5–7 s before it expires: one host makes
    // 3–5 refreshes in 22 s (each host's own jitter: the earlier of two comes first). Two hosts
    // refreshing on their own would make twice that; in a fleet, the host that comes second
    // finds the new token in the database.
    assert!(
        (2..=5).contains(&refreshes),
        "{refreshes} refreshes in 22 s by two daemons"
    );
    let (current, _, alive) = fake.newest_grant().unwrap();
    assert!(alive, "a refresh token was spent twice across daemons");
    assert_eq!(stored_refresh_token(&first, &pg), current);
}

/// A daemon hears the fleet's changes (LISTEN/NOTIFY): what another host commits reaches it at
/// once, not at its next half-minute look. With its listening connection cut, it polls until the
/// connection is made again.
#[test]
fn a_fleet_daemon_hears_changes_and_polls_while_it_cannot() {
    let pg = Postgres::start();
    let fake = rotating_provider(0);
    let (first, second) = two_hosts(&fake, &pg);
    let on_b = serve_as(&second, &pg, "host-b");
    let listeners = || -> i64 {
        pg.client()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tokenvault-listen'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let started = std::time::Instant::now();
        while !done() {
            // Far below the 30 s a listening daemon waits before looking on its own.
            assert!(started.elapsed().as_secs() < 10, "{what}: not within 10 s");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    until("the daemon listens", &|| listeners() == 1);
    // Let the first looks (at start, and when hearing began) pass.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let serves = |name: &str| {
        on_b.get("/v1/accounts").json()["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|account| account["name"] == name)
    };
    let args = browser_add_args(&first, &fake, "cal", &["--timeout", "30"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fleet_run(&first, &pg, &args).ok();
    until("an account added on host-a is served by host-b", &|| {
        serves("cal")
    });

    let cut: i64 = pg
        .client()
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'tokenvault-listen'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cut, 1);
    fleet_run(&first, &pg, &["remove", "cal"]).ok();
    until("a removal reaches host-b without its listener", &|| {
        !serves("cal")
    });
    until("the listening connection is made again", &|| {
        listeners() == 1
    });
}

#[test]
fn a_commit_cut_off_by_a_database_restart_lands_when_it_is_back() {
    let pg = Postgres::start();
    let fake = rotating_provider(0);
    let vault = fleet_with_mail(&fake, &pg);
    // The provider takes 3 s to answer; meanwhile the database crashes and recovers, cutting the
    // connection the lease was taken on. The rotated refresh token exists only in the process.
    fake.configure(|b| b.delay = Some(std::time::Duration::from_secs(3)));
    let requests = fake.counters(|c| c.token_requests);
    let mut command = fleet_command(&vault, &pg, "host-a", &["token", "mail", "--no-daemon"]);
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let asking = command.spawn().unwrap();
    assert!(crate::support::eventually(
        std::time::Duration::from_secs(20),
        || fake.counters(|c| c.token_requests) > requests
    ));
    pg.restart_immediately();
    let output = asking.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(fake.is_access_token(String::from_utf8(output.stdout).unwrap().trim()));
    let (current, _, alive) = fake.newest_grant().unwrap();
    assert!(alive);
    assert_eq!(
        stored_refresh_token(&vault, &pg),
        current,
        "the rotated refresh token was committed after the restart"
    );
    // And the next refresh spends it without trouble.
    fake.configure(|b| b.delay = None);
    fleet_run(&vault, &pg, &["token", "mail", "--no-daemon"]).ok();
    assert!(fake.newest_grant().unwrap().2);
}

/// Five daemons, one of them killed and started again every two seconds: each validation
/// firing is one live refresh for the whole fleet, not five; then a dead grant and its recovery
/// are alerted once each, fleet-wide.
#[test]
fn five_daemons_through_kills_validate_each_firing_once_and_alert_once() {
    let pg = Postgres::start();
    // Tokens live an hour, so every refresh is a validation; a validation orphaned by a kill
    // in flight is taken once more within the grace.
    let fake = provider_with_grace(3600);
    let vaults = five_hosts(&fake, &pg);
    let alerts = alert_to_one_file(
        &vaults.iter().collect::<Vec<_>>(),
        &fake,
        "[validation]\nschedule = \"*/4 * * * * *\"\n",
    );
    let before = fake.counters(|c| c.refresh_grants);
    let mut daemons = serve_all(&vaults, &pg);
    let started = std::time::Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(16) {
        std::thread::sleep(Duration::from_secs(2));
        kill_and_serve_again(&mut daemons, &vaults, &pg, (round * 3 + 1) % 5);
        round += 1;
    }
    let validations = fake.counters(|c| c.refresh_grants) - before;
    // Four or five firings in 16-18 s; five daemons validating on their own would make 20.
    assert!(
        (3..=5).contains(&validations),
        "{validations} validations in 16 s by five daemons"
    );
    let (current, previous, alive) = fake.newest_grant().unwrap();
    assert!(
        alive,
        "a validation presented a refresh token outside the chain"
    );
    let stored = stored_refresh_token(&vaults[0], &pg);
    assert!(stored == current || Some(&stored) == previous.as_ref());

    // The grant is revoked: the next firing finds out, and one host alerts, while daemons die.
    fake.revoke_all();
    kill_and_serve_again(&mut daemons, &vaults, &pg, 2);
    assert_alerted_once(&alerts, "mail|reauth_required");
    kill_and_serve_again(&mut daemons, &vaults, &pg, 0);
    fleet_run(&vaults[0], &pg, &["login", "mail", "--timeout", "30"]).ok();
    assert_alerted_once(&alerts, "mail|recovered");
    let hooks = fake.webhooks();
    for event in ["reauth_required", "recovered"] {
        let sent = hooks.iter().filter(|hook| hook["event"] == event).count();
        assert_eq!(sent, 1, "{event}: {hooks:?}");
    }
}

/// A validation firing claimed by a host that died before proving it is run by another host once
/// the claim runs out, not left until the next firing.
#[test]
fn a_validation_a_dead_host_claimed_is_run_by_another() {
    let pg = Postgres::start();
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let (first, second) = two_hosts(&fake, &pg);
    let _on_b = serve_as(&second, &pg, "host-b");
    let firing = chrono::Utc::now().timestamp() - 10;
    // What host-a left behind when it died: the firing claimed, the claim run out, no proof.
    pg.client()
        .execute(
            "UPDATE accounts SET validated_firing = $1::bigint, last_validated_at = $1::bigint - 3600,
                 validation_claim_until = clock_timestamp() - interval '1 second'
             WHERE name = 'mail'",
            &[&firing],
        )
        .unwrap();
    let before = fake.counters(|c| c.refresh_grants);
    let validated = || -> i64 {
        pg.client()
            .query_one(
                "SELECT last_validated_at FROM accounts WHERE name = 'mail'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    assert!(
        crate::support::eventually(std::time::Duration::from_secs(30), || validated() >= firing),
        "host-b did not take over the validation"
    );
    assert_eq!(fake.counters(|c| c.refresh_grants), before + 1, "one proof");
    drop(first);
}

/// A provider outage makes five daemons back off once for the fleet, not five times, though
/// one of them is killed and started again meanwhile.
#[test]
fn a_provider_outage_makes_five_daemons_back_off_once() {
    let pg = Postgres::start();
    let fake = rotating_provider(0);
    let (vaults, mut daemons) = five_daemons(&fake, &pg);
    // Every ask needs a new token; the provider is down (bare 503s) for 9 s.
    let outage = Duration::from_secs(9);
    let requests = fake.counters(|c| c.token_requests);
    fake.configure(|b| b.down_until = Some(std::time::Instant::now() + outage));
    let started = std::time::Instant::now();
    let mut killed = false;
    while started.elapsed() < outage - Duration::from_millis(300) {
        for daemon in &daemons {
            let _ = daemon.get("/v1/token/mail?min_valid=1");
        }
        if !killed && started.elapsed() > Duration::from_secs(3) {
            kill_and_serve_again(&mut daemons, &vaults, &pg, 3);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = fake.counters(|c| c.token_requests) - requests;
    // The first failure pauses the account for the fleet (5 s, then 10 s): two calls in 9 s.
    // Each daemon backing off on its own would make two or three each.
    assert!(
        (1..=3).contains(&during),
        "{during} calls to a provider that was down, from five daemons"
    );
    // Back up: served again everywhere, and the grant survived.
    std::thread::sleep(Duration::from_secs(11));
    until_all_serve(&daemons);
    assert!(fake.newest_grant().unwrap().2);
}

/// Exactly one `line` ends up in the alert file, though both daemons look at the outbox every
/// second (given time for a duplicate to show).
fn assert_alerted_once(alerts: &std::path::PathBuf, line: &str) {
    let count = || {
        crate::support::alert_lines(alerts)
            .iter()
            .filter(|written| written.as_str() == line)
            .count()
    };
    assert!(
        crate::support::eventually(std::time::Duration::from_secs(10), || count() == 1),
        "{:?}",
        crate::support::alert_lines(alerts)
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(count(), 1, "{:?}", crate::support::alert_lines(alerts));
}

#[test]
fn a_deadline_is_alerted_once_by_the_whole_fleet() {
    let pg = Postgres::start();
    let fake = rotating_provider(0);
    let (first, second) = two_hosts(&fake, &pg);
    let alerts = alert_to_one_file(&[&first, &second], &fake, "");
    // A client secret that expires in a week: within the two weeks' warning.
    let in_a_week = (chrono::Utc::now() + chrono::Duration::days(7))
        .format("%Y-%m-%d")
        .to_string();
    fleet_run(
        &first,
        &pg,
        &[
            "set-client-secret",
            "mail",
            "--current",
            "--expires",
            &in_a_week,
        ],
    )
    .ok();
    let daemons = serve_both(&first, &second, &pg);
    assert_alerted_once(&alerts, "mail|client_secret_expiring");
    // Restarted, the daemons do not say it again.
    drop(daemons);
    let _daemons = serve_both(&first, &second, &pg);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_alerted_once(&alerts, "mail|client_secret_expiring");
}

/// Every host's alert command appends to one file, and every host posts to the provider's
/// webhook; `more` is the rest of each host's config.toml.
fn alert_to_one_file(vaults: &[&TestVault], fake: &FakeOAuth, more: &str) -> std::path::PathBuf {
    let alerts = vaults[0].root.path().join("fleet-alerts.log");
    for vault in vaults {
        std::fs::write(
            vault.dir.join("config.toml"),
            format!(
                "[alert]\ncommand = \"printf '%s|%s\\\\n' \\\"$VAULT_ACCOUNT\\\" \\\"$VAULT_EVENT\\\" >> {}\"\nwebhook = \"{}/webhook\"\ndesktop = false\n{more}",
                alerts.display(),
                fake.base
            ),
        )
        .unwrap();
    }
    alerts
}

#[test]
fn a_dead_grant_and_its_recovery_are_alerted_once_by_the_whole_fleet() {
    let pg = Postgres::start();
    let fake = rotating_provider(0);
    let (first, second) = two_hosts(&fake, &pg);
    let alerts = alert_to_one_file(&[&first, &second], &fake, "");
    let daemons = serve_both(&first, &second, &pg);
    fake.revoke_all();
    for _ in 0..5 {
        for daemon in &daemons {
            let answer = daemon.get("/v1/token/mail?min_valid=1");
            assert_ne!(answer.status, 200, "{}", answer.body);
        }
    }
    assert_alerted_once(&alerts, "mail|reauth_required");
    let hooks: Vec<_> = fake
        .webhooks()
        .into_iter()
        .filter(|hook| hook["event"] == "reauth_required")
        .collect();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert!(hooks[0]["id"].as_i64().is_some(), "{hooks:?}");

    // `vault login` on one host brings the account back for all: one "recovered", and both
    // daemons serve tokens again.
    fleet_run(&first, &pg, &["login", "mail", "--timeout", "30"]).ok();
    assert_alerted_once(&alerts, "mail|recovered");
    for daemon in &daemons {
        assert!(crate::support::eventually(
            std::time::Duration::from_secs(10),
            || daemon.get("/v1/token/mail?min_valid=1").status == 200
        ));
    }
}

#[test]
fn validate_schedule_and_remove_work_on_a_fleet() {
    let pg = Postgres::start();
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = fleet_with_mail(&fake, &pg);
    let refreshes = fake.counters(|c| c.refresh_grants);
    let validated = fleet_run(&vault, &pg, &["validate", "mail"]);
    assert!(
        validated.ok().stdout.contains("mail: ok"),
        "{}",
        validated.stdout
    );
    assert_eq!(fake.counters(|c| c.refresh_grants), refreshes + 1);
    fleet_run(
        &vault,
        &pg,
        &[
            "schedule",
            "mail",
            "0 0 */6 * * *",
            "--refresh-before",
            "300",
        ],
    )
    .ok();
    let status = fleet_run(&vault, &pg, &["status", "mail"]);
    assert!(
        status.ok().stdout.contains("0 0 */6 * * *"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("300 s before expiry"),
        "{}",
        status.stdout
    );
    // Key rotation is checked as on one host: this account's key is not one tokenvault rotates.
    fleet_run(&vault, &pg, &["schedule", "mail", "--rotate-every", "90d"])
        .fails_with(1, "cannot rotate its key");
    // Removed on every host, its secrets gone (the built-in provider has no revocation
    // endpoint, which the command says).
    let removed = fleet_run(&vault, &pg, &["remove", "mail"]);
    assert!(
        removed.ok().stdout.contains("Removed account mail"),
        "{}",
        removed.stdout
    );
    let list = fleet_run(&vault, &pg, &["list"]);
    assert!(
        list.ok().stdout.contains("No accounts yet"),
        "{}",
        list.stdout
    );
    let mut client = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    let secrets: i64 = client
        .query_one("SELECT count(*) FROM secrets", &[])
        .unwrap()
        .get(0);
    assert_eq!(secrets, 0);
}

/// Five hosts (their own directories and master keys) enrolled in one fleet holding `mail`.
fn five_hosts(fake: &FakeOAuth, pg: &Postgres) -> Vec<TestVault> {
    let mut vaults = vec![fleet_with_mail(fake, pg)];
    for n in 1..5 {
        let vault = TestVault::new(Some(fake));
        let host = host_name(n);
        let (joining, code) = start_join(&vault, pg, &host);
        admit(&vaults[0], pg, &host, &code).ok();
        assert!(joining.wait_with_output().unwrap().status.success());
        vaults.push(vault);
    }
    vaults
}

/// A daemon for each of `vaults` (host `host_name(n)`, its own socket), up and answering.
fn serve_all(vaults: &[TestVault], pg: &Postgres) -> Vec<crate::support::daemon::Daemon> {
    vaults
        .iter()
        .enumerate()
        .map(|(n, vault)| serve_fleet(vault, pg, n))
        .collect()
}

/// Five daemons serving `mail` from one fleet; returns them with their vaults.
fn five_daemons(
    fake: &FakeOAuth,
    pg: &Postgres,
) -> (Vec<TestVault>, Vec<crate::support::daemon::Daemon>) {
    let vaults = five_hosts(fake, pg);
    let daemons = serve_all(&vaults, pg);
    (vaults, daemons)
}

/// SIGKILLs daemon `n` and starts it again.
fn kill_and_serve_again(
    daemons: &mut [crate::support::daemon::Daemon],
    vaults: &[TestVault],
    pg: &Postgres,
    n: usize,
) {
    crate::support::daemon::signal(&daemons[n].child, rustix::process::Signal::KILL);
    let _ = daemons[n].child.wait();
    daemons[n] = serve_fleet(&vaults[n], pg, n);
}

fn host_name(n: usize) -> String {
    if n == 0 {
        "host-a".into()
    } else {
        format!("host-{n}")
    }
}

fn serve_fleet(vault: &TestVault, pg: &Postgres, n: usize) -> crate::support::daemon::Daemon {
    serve_as(vault, pg, &host_name(n))
}

/// `vault serve` of `vault` as `host` of the fleet, up and answering.
fn serve_as(vault: &TestVault, pg: &Postgres, host: &str) -> crate::support::daemon::Daemon {
    serve_with(vault, pg, host, &[])
}

fn serve_with(
    vault: &TestVault,
    pg: &Postgres,
    host: &str,
    extra: &[&str],
) -> crate::support::daemon::Daemon {
    let mut command = fleet_command(vault, pg, host, &[&["serve"], extra].concat());
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    crate::support::daemon::Daemon::spawn(command, vault)
}

/// What the askers of `ask_all` saw.
#[derive(Debug, Default)]
struct Asked {
    /// Tokens served (each one the provider issued and not expired).
    served: usize,
    /// `503 store_unavailable` answers.
    unavailable: usize,
}

/// Asks every socket for `mail` until `stop`; every 200 answer must be a token the provider
/// issued that has not expired.
fn ask_all(
    fake: &FakeOAuth,
    sockets: Vec<std::path::PathBuf>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Asked> {
    let fake = fake.clone();
    std::thread::spawn(move || {
        let mut asked = Asked::default();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for socket in &sockets {
                // A daemon killed a moment ago does not answer.
                let asked_at = std::time::Instant::now();
                let Some(answer) =
                    crate::support::daemon::try_get(socket, "/v1/token/mail?min_valid=1")
                else {
                    continue;
                };
                if answer.status == 200 {
                    let token = answer.json()["access_token"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    assert!(fake.is_access_token(&token), "an invented token was served");
                    // Expired before it was asked for; a token that ran out while this thread
                    // waited for the answer (a loaded machine) was fine when served.
                    assert!(
                        fake.was_live_access_token(&token, asked_at),
                        "an expired token was served"
                    );
                    asked.served += 1;
                } else if answer.status == 503 && answer.body.contains("store_unavailable") {
                    asked.unavailable += 1;
                }
            }
        }
        asked
    })
}

/// A provider rotating on every refresh with Okta's default reuse leeway (30 s), its access
/// tokens living `lifetime` seconds.
fn provider_with_grace(lifetime: u64) -> FakeOAuth {
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    fake.configure(|b| {
        b.rotate = true;
        b.access_lifetime = lifetime;
        b.reuse_grace = Some(std::time::Duration::from_secs(30));
    });
    fake
}

/// The checks after chaos: the grant is alive, the fleet holds its newest refresh token, and no
/// refresh token was presented twice — not even within the provider's grace — so there was one
/// refresh per token, fleet-wide.
fn assert_one_refresh_per_token(fake: &FakeOAuth, vault: &TestVault, pg: &Postgres) {
    let (current, _, alive) = fake.newest_grant().unwrap();
    assert!(alive, "the grant died: a refresh token was presented twice");
    assert_eq!(
        fake.counters(|c| c.grace_reuses),
        0,
        "a refresh token was presented twice (the grace hid it)"
    );
    assert_eq!(stored_refresh_token(vault, pg), current);
}

/// A `503 store_unavailable` answer.
fn assert_store_unavailable(answer: &crate::support::daemon::Answer) {
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(
        answer.json()["error"],
        "store_unavailable",
        "{}",
        answer.body
    );
}

/// Waits until every daemon serves `mail` again.
fn until_all_serve(daemons: &[crate::support::daemon::Daemon]) {
    for daemon in daemons {
        let started = std::time::Instant::now();
        loop {
            let answer = daemon.get("/v1/token/mail?min_valid=1");
            if answer.status == 200 {
                break;
            }
            assert!(
                started.elapsed().as_secs() < 30,
                "a daemon did not recover: {} {}",
                answer.status,
                answer.body
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

#[test]
fn five_daemons_ride_out_database_restarts_fast_and_immediate() {
    let pg = Postgres::start();
    let fake = provider_with_grace(2);
    let (vaults, daemons) = five_daemons(&fake, &pg);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sockets = daemons.iter().map(|daemon| daemon.socket.clone()).collect();
    let asker = ask_all(&fake, sockets, stop.clone());
    for round in 0..6 {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        if round % 2 == 0 {
            pg.stop_server();
            pg.start_server();
        } else {
            pg.restart_immediately();
        }
    }
    until_all_serve(&daemons);
    std::thread::sleep(std::time::Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let asked = asker.join().unwrap();
    drop(daemons);
    assert!(asked.served > 20, "{asked:?}");
    assert_one_refresh_per_token(&fake, &vaults[0], &pg);
}

#[test]
fn five_daemons_with_the_database_down_30_s_refresh_nothing_and_recover() {
    let pg = Postgres::start();
    let fake = provider_with_grace(6);
    let (vaults, daemons) = five_daemons(&fake, &pg);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sockets = daemons.iter().map(|daemon| daemon.socket.clone()).collect();
    let asker = ask_all(&fake, sockets, stop.clone());
    std::thread::sleep(std::time::Duration::from_secs(3));
    pg.stop_server();
    // A refresh whose request left before the database went is allowed to arrive.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let refreshes = fake.counters(|c| c.refresh_grants);
    std::thread::sleep(std::time::Duration::from_secs(29));
    assert_eq!(
        fake.counters(|c| c.refresh_grants),
        refreshes,
        "a refresh without the lease while the database was down"
    );
    pg.start_server();
    until_all_serve(&daemons);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let asked = asker.join().unwrap();
    drop(daemons);
    // Tokens living 6 s ran out during the outage: then the daemons said so.
    assert!(asked.unavailable > 0 && asked.served > 0, "{asked:?}");
    assert_one_refresh_per_token(&fake, &vaults[0], &pg);
}

#[test]
fn five_daemons_killed_at_random_keep_one_linear_rotation_chain() {
    let pg = Postgres::start();
    // A refresh token orphaned by a daemon killed while its request was in flight is accepted
    // once more within the grace.
    let fake = provider_with_grace(1);
    let (vaults, mut daemons) = five_daemons(&fake, &pg);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sockets = daemons.iter().map(|daemon| daemon.socket.clone()).collect();
    let asker = ask_all(&fake, sockets, stop.clone());
    for round in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(700));
        kill_and_serve_again(&mut daemons, &vaults, &pg, (round * 3 + 1) % 5);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let asked = asker.join().unwrap();
    drop(daemons);
    assert!(asked.served > 20, "{asked:?}");
    // One chain: the grant is alive and the fleet holds its newest refresh token (a kill during
    // a commit's last moment leaves the one before it, which the grace still takes).
    let (current, previous, alive) = fake.newest_grant().unwrap();
    assert!(
        alive,
        "the grant died: a refresh token was presented outside the chain"
    );
    let stored = stored_refresh_token(&vaults[0], &pg);
    assert!(
        stored == current || Some(&stored) == previous.as_ref(),
        "the fleet holds a refresh token that is neither the newest nor the one before"
    );
}

/// The chaos tests together, for half an hour (`TOKENVAULT_SOAK_SECONDS` to change that): every
/// few seconds a daemon is killed and restarted, or paused for a while, or the database restarts
/// (fast or immediate), with askers on every daemon against a rotating provider with a grace.
#[test]
#[ignore = "soak test, 30 minutes"]
fn fleet_soak() {
    let seconds = std::env::var("TOKENVAULT_SOAK_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1800);
    let pg = Postgres::start();
    let fake = provider_with_grace(2);
    let (vaults, mut daemons) = five_daemons(&fake, &pg);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sockets = daemons.iter().map(|daemon| daemon.socket.clone()).collect();
    let asker = ask_all(&fake, sockets, stop.clone());
    let started = std::time::Instant::now();
    let mut round = 0usize;
    while started.elapsed().as_secs() < seconds {
        std::thread::sleep(std::time::Duration::from_millis(
            2000 + 700 * (round % 5) as u64,
        ));
        let n = (round * 3 + 1) % daemons.len();
        match round % 4 {
            0 => kill_and_serve_again(&mut daemons, &vaults, &pg, n),
            1 => {
                crate::support::daemon::signal(&daemons[n].child, rustix::process::Signal::STOP);
                std::thread::sleep(std::time::Duration::from_secs(3));
                crate::support::daemon::signal(&daemons[n].child, rustix::process::Signal::CONT);
            }
            2 => {
                pg.stop_server();
                pg.start_server();
            }
            _ => pg.restart_immediately(),
        }
        round += 1;
    }
    until_all_serve(&daemons);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let asked = asker.join().unwrap();
    drop(daemons);
    assert!(asked.served > 20, "{asked:?}");
    // Killed daemons may orphan a refresh in flight, which the grace takes once: the grant must
    // live, and the fleet hold its newest refresh token or the one before.
    let (current, previous, alive) = fake.newest_grant().unwrap();
    assert!(alive, "the grant died after {round} rounds of chaos");
    let stored = stored_refresh_token(&vaults[0], &pg);
    assert!(stored == current || Some(&stored) == previous.as_ref());
    eprintln!(
        "soak: {round} rounds in {} s, {} tokens served, {} refreshes, {} within the grace",
        started.elapsed().as_secs(),
        asked.served,
        fake.counters(|c| c.refresh_grants),
        fake.counters(|c| c.grace_reuses)
    );
}

#[test]
fn negative_control_five_copies_of_one_vault_kill_the_grant() {
    use crate::support::add_with_browser;
    // The same checks against what users do without fleet mode: five hosts, each with its own
    // copy of one vault (one refresh token), refreshing on their own.
    let fake = rotating_provider(1);
    let original = TestVault::new(Some(&fake));
    add_with_browser(&original, &fake, "mail").ok();
    let copies: Vec<TestVault> = (0..5).map(|_| original.copy()).collect();
    let daemons: Vec<_> = copies
        .iter()
        .map(|vault| crate::support::daemon::Daemon::start(vault, &[]))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sockets = daemons.iter().map(|daemon| daemon.socket.clone()).collect();
    let asker = ask_all(&fake, sockets, stop.clone());
    std::thread::sleep(std::time::Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    asker.join().unwrap();
    drop(daemons);
    let (_, _, alive) = fake.newest_grant().unwrap();
    assert!(
        !alive,
        "five copies of one refresh token rotating on their own must kill the grant — else the fleet test's check could not fail"
    );
}

#[test]
fn a_local_vault_moves_into_a_fleet_and_a_fleet_exports() {
    use crate::support::{add_with_browser, write_private};
    let pg = Postgres::start();
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    add_with_browser(&vault, &fake, "mail").ok();
    let moved = fleet_run(&vault, &pg, &["fleet", "init", "--import-local"]);
    assert!(
        moved.ok().stdout.contains("Copied 1 account(s)"),
        "{}",
        moved.stdout
    );
    crate::support::token(&vault, &fake, &["mail", "--no-daemon"]);
    let token = fleet_run(
        &vault,
        &pg,
        &["token", "mail", "--no-daemon", "--min-valid", "7200"],
    );
    assert!(fake.is_access_token(token.ok().stdout.trim()));
    // An archive of the fleet opens in a plain vault elsewhere.
    let passphrase = vault.root.path().join("archive-passphrase");
    write_private(&passphrase, "correct horse battery staple\n");
    let archive = vault.root.path().join("fleet.tvx");
    fleet_run(
        &vault,
        &pg,
        &[
            "export",
            archive.to_str().unwrap(),
            "--passphrase-file",
            passphrase.to_str().unwrap(),
        ],
    )
    .ok();
    let elsewhere = TestVault::new(Some(&fake));
    elsewhere
        .run(&[
            "import",
            archive.to_str().unwrap(),
            "--passphrase-file",
            passphrase.to_str().unwrap(),
        ])
        .ok();
    crate::support::token(&elsewhere, &fake, &["mail", "--no-daemon"]);
}

#[test]
fn with_the_database_down_the_daemon_serves_what_it_holds_and_refreshes_nothing() {
    let pg = Postgres::start();
    let fake = rotating_provider(6);
    let vault = fleet_with_mail(&fake, &pg);
    let daemon = serve_fleet(&vault, &pg, 0);
    let first = daemon.get("/v1/token/mail?min_valid=1");
    assert_eq!(first.status, 200, "{}", first.body);
    let held = first.json()["access_token"].as_str().unwrap().to_owned();

    pg.stop_server();
    let refreshes = fake.counters(|c| c.refresh_grants);
    // The token the daemon holds is served while it is valid (as after any passing failure)…
    let cached = daemon.get("/v1/token/mail?min_valid=1");
    assert_eq!(cached.status, 200, "{}", cached.body);
    assert_eq!(cached.json()["access_token"], held.as_str());
    // …and once it has expired, a 503 naming the database; nothing was refreshed meanwhile,
    // though the refresher found the token due.
    std::thread::sleep(std::time::Duration::from_secs(7));
    let refused = daemon.get("/v1/token/mail?min_valid=1");
    assert_store_unavailable(&refused);
    assert_eq!(
        fake.counters(|c| c.refresh_grants),
        refreshes,
        "refreshed without the lease"
    );

    // Back up: served fresh without a restart.
    pg.start_server();
    assert!(crate::support::eventually(
        std::time::Duration::from_secs(20),
        || {
            let answer = daemon.get("/v1/token/mail?min_valid=1");
            answer.status == 200 && answer.json()["access_token"] != held.as_str()
        }
    ));
    assert!(fake.newest_grant().unwrap().2);
}

/// The window FLEET.md names: a host paused longer than its lease after its request left. With a
/// provider whose reuse grace outlasts the lease (L < G), the fleet carries on: another host takes
/// the lease once it runs out, the paused host's late commit is fenced out, and the grant lives.
/// It also caught the paused host, on waking, resending its lost request with a token the fleet
/// had long moved past (the resend now needs the lease to still cover it). About 80 s.
/// The database goes while a refresh is out: its commit waits for the database (the rotated
/// refresh token exists only in the daemon), but a request for another account is answered
/// within seconds — a 503 with Retry-After — not held up behind that commit for minutes, and one
/// for the account itself within 45 s.
#[test]
fn a_commit_waiting_for_the_database_holds_up_no_other_account() {
    let pg = Postgres::start();
    // mail's tokens live 6 s (the daemon refreshes it all the time); other's an hour, and the
    // daemon has not read other's token yet: asking for it needs the store.
    let fake = rotating_provider(6);
    let vault = fleet_with_mail(&fake, &pg);
    fake.configure(|b| b.access_lifetime = 3600);
    let args = browser_add_args(&vault, &fake, "other", &["--timeout", "30"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fleet_run(&vault, &pg, &args).ok();
    fake.configure(|b| b.access_lifetime = 6);
    let daemon = serve_fleet(&vault, &pg, 0);
    assert_eq!(daemon.get("/v1/token/mail").status, 200);

    // mail's next refresh is processed, then answered 3 s later; the database goes meanwhile.
    fake.inject(Fault::SlowAnswer(Duration::from_secs(3)));
    let requests = fake.counters(|c| c.token_requests);
    assert!(crate::support::eventually(Duration::from_secs(20), || {
        fake.counters(|c| c.token_requests) > requests
    }));
    pg.stop_server();
    std::thread::sleep(Duration::from_secs(4));
    let asked = std::time::Instant::now();
    let refused = daemon.get("/v1/token/other");
    let waited = asked.elapsed();
    assert_store_unavailable(&refused);
    assert!(
        refused
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("retry-after")),
        "{:?}",
        refused.headers
    );
    assert!(
        waited < Duration::from_secs(10),
        "a request for another account waited {waited:?} behind a commit"
    );
    // A request for mail itself waits for its refresh, but not as long as the commit may take
    // (nor as long as vault token waits for an answer): then 503, and the refresh goes on.
    let asked = std::time::Instant::now();
    let pending = daemon.get("/v1/token/mail");
    assert_store_unavailable(&pending);
    assert!(
        asked.elapsed() < Duration::from_secs(55),
        "{:?}",
        asked.elapsed()
    );
    // Back up: mail's rotated token is committed (the grant lives on), and both are served.
    pg.start_server();
    for name in ["mail", "other"] {
        assert!(
            crate::support::eventually(Duration::from_secs(20), || {
                daemon.get(&format!("/v1/token/{name}")).status == 200
            }),
            "{name}"
        );
    }
    assert!(fake.newest_grant().unwrap().2, "the grant survived");
}

/// What other hosts change reaches this daemon's event stream, account by account: a state
/// change heard together with another account's removal is announced, not lost to the full
/// reload the removal calls for.
#[test]
fn a_state_change_heard_with_a_removal_reaches_the_event_stream() {
    let pg = Postgres::start();
    let fake = rotating_provider(3600);
    let vault = fleet_with_mail(&fake, &pg);
    let args = browser_add_args(&vault, &fake, "other", &["--timeout", "30"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fleet_run(&vault, &pg, &args).ok();
    let daemon = serve_fleet(&vault, &pg, 0);
    let events = crate::daemon::EventReader::start(&daemon.socket, None);
    std::thread::sleep(Duration::from_millis(500));
    // One commit elsewhere: mail found dead, other removed.
    pg.client()
        .batch_execute(
            "BEGIN;
             UPDATE accounts SET state = 'reauth_required', last_error = 'revoked' WHERE name = 'mail';
             DELETE FROM accounts WHERE name = 'other';
             COMMIT;",
        )
        .unwrap();
    assert!(
        events
            .wait_for("reauth_required", Duration::from_secs(10))
            .is_some(),
        "the state change was not announced"
    );
    assert!(crate::support::eventually(Duration::from_secs(10), || {
        daemon.get("/v1/token/other").status == 404
    }));
}

/// The daemon's own connection cut (its listener left up) just before another host's change:
/// the renewal of what it heard fails, and a full look finds the change within seconds instead
/// of at the next half minute.
#[test]
fn a_change_heard_while_the_daemons_connection_is_cut_is_not_lost() {
    let pg = Postgres::start();
    let fake = rotating_provider(3600);
    let vault = fleet_with_mail(&fake, &pg);
    let daemon = serve_fleet(&vault, &pg, 0);
    let events = crate::daemon::EventReader::start(&daemon.socket, None);
    // Past the first looks (at start, and when hearing began).
    std::thread::sleep(Duration::from_secs(3));
    let mut db = pg.client();
    let cut: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name <> 'tokenvault-listen' AND backend_type = 'client backend'
               AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cut, 1, "the daemon's one connection");
    db.execute(
        "UPDATE accounts SET state = 'reauth_required', last_error = 'revoked' WHERE name = 'mail'",
        &[],
    )
    .unwrap();
    assert!(
        events
            .wait_for("reauth_required", Duration::from_secs(8))
            .is_some(),
        "the change was not taken in (the next full look is 30 s away)"
    );
}

/// One of five daemons stopped (SIGSTOP) with its refresh out, for longer than its lease: the
/// others answer "try again" while the lease lasts, then one of them takes over; the stopped
/// daemon's late answer, once it runs again, overwrites nothing.
#[test]
fn a_daemon_paused_longer_than_its_lease_is_fenced_out() {
    let pg = Postgres::start();
    let fake = rotating_provider(0);
    fake.configure(|b| b.reuse_grace = Some(Duration::from_secs(120)));
    let (vaults, daemons) = five_daemons(&fake, &pg);
    // Make host-a take the lease and stop it while its refresh is out: the provider answers
    // after a second, by when host-a is stopped.
    fake.configure(|b| b.delay = Some(Duration::from_secs(1)));
    let requests = fake.counters(|c| c.token_requests);
    let socket = daemons[0].socket.clone();
    let asking = std::thread::spawn(move || {
        crate::support::daemon::try_get(&socket, "/v1/token/mail?min_valid=1")
    });
    assert!(crate::support::eventually(Duration::from_secs(10), || {
        fake.counters(|c| c.token_requests) > requests
    }));
    crate::support::daemon::signal(&daemons[0].child, rustix::process::Signal::STOP);
    fake.configure(|b| b.delay = None);
    // The others get a quick "try again" while host-a's lease lasts, then one takes over.
    let paused_at = std::time::Instant::now();
    let mut served_after_the_lease = false;
    let mut round = 0;
    while paused_at.elapsed() < Duration::from_secs(70) {
        let answer = daemons[1 + round % 4].get("/v1/token/mail?min_valid=1");
        assert_ne!(answer.status, 409, "{}", answer.body);
        served_after_the_lease |= answer.status == 200 && paused_at.elapsed().as_secs() > 55;
        round += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(served_after_the_lease, "no host took over the lease");
    crate::support::daemon::signal(&daemons[0].child, rustix::process::Signal::CONT);
    let _ = asking.join();
    std::thread::sleep(Duration::from_secs(2));
    // host-a's late answer did not overwrite what another host committed after it.
    let (current, previous, alive) = fake.newest_grant().unwrap();
    assert!(alive, "the grant died");
    let stored = stored_refresh_token(&vaults[0], &pg);
    assert!(stored == current || Some(&stored) == previous.as_ref());
    until_all_serve(&daemons);
}

#[test]
fn a_broken_config_keeps_the_local_vault_working_unless_it_may_name_a_fleet() {
    let fake = fake_oauth::start(OfflineRule::OfflineAccessScope);
    let vault = TestVault::new(Some(&fake));
    crate::support::add_with_browser(&vault, &fake, "mail").ok();
    let config = vault.dir.join("config.toml");
    std::fs::write(&config, "[alert\ncommand = broken").unwrap();
    // As before fleet mode: the account's state is still shown, tokens still handed out.
    vault.run(&["status"]).ok();
    crate::support::token(&vault, &fake, &["mail", "--no-daemon"]);
    // A broken file that may name a fleet is never read as "no fleet": that would be the wrong
    // vault.
    std::fs::write(&config, "[fleet\ndatabase = broken").unwrap();
    vault.run(&["status"]).fails_with(1, "config.toml");
}
