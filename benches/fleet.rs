//! Fleet benchmark: `cargo bench --bench fleet` (PostgreSQL installed, as for the tests).
//!
//! 10,000 accounts in a fleet on a throwaway PostgreSQL cluster, served by five `vault serve`
//! processes with their own directories and master keys. Measures each daemon's start-up time and
//! RSS, its token answers from memory (keep-alive, 8 connections) next to one daemon serving the
//! same accounts from the embedded vault, and — with 100 accounts refreshed against the built-in
//! provider (15 s tokens, rotating) — the upstream refreshes the five daemons make next to what
//! one daemon alone makes, and the database's transactions per second meanwhile.

#[path = "../tests/e2e/support/postgres.rs"]
#[allow(dead_code)]
mod cluster;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tokenvault::account::{AccountConfig, Grant, LoginMethod, SecretKind};
use tokenvault::devprovider::{CLIENT_ID, CLIENT_SECRET, DevProvider, OfflineRule};
use tokenvault::keys::{KeySource, Unlock};
use tokenvault::oauth::ClientAuth;
use tokenvault::oauth::provider::Endpoints;
use tokenvault::secret::SecretString;
use tokenvault::store::{AnyStore, FleetDb, JoinCode, NewAccount, PgStore, Store, TokenUpdate};

use support::{load, rss_kib, spawn, wait_for};

const HOSTS: usize = 5;
const ACCOUNTS: usize = 10_000;
const LIVE: usize = 100;
const LIFETIME: u64 = 15;
const WINDOW: Duration = Duration::from_secs(30);

fn main() {
    let work = tempfile::tempdir().unwrap();
    let pg = cluster::Postgres::start_counting_statements();
    let url = pg.url();
    println!(
        "fleet of {HOSTS} daemons, {ACCOUNTS} accounts, PostgreSQL on 127.0.0.1:{}",
        pg.port
    );

    let provider = DevProvider::start(OfflineRule::OfflineAccessScope).unwrap();
    provider.configure(|b| {
        b.rotate = true;
        b.access_lifetime = LIFETIME;
    });
    let hosts = enroll(work.path(), &url);
    let mut first = open(&url, &hosts[0]);
    support::add_accounts(&mut first, ACCOUNTS);
    add_live_accounts(&mut first, &provider);
    drop(first);

    let daemons: Vec<(Child, PathBuf)> = hosts
        .iter()
        .map(|host| {
            let started = Instant::now();
            let (child, socket) = serve(host, Some(&url));
            println!(
                "{}: start-up {} ms",
                host.name,
                started.elapsed().as_millis()
            );
            (child, socket)
        })
        .collect();

    println!("token answers from memory, keep-alive c=8 (each daemon in turn):");
    for ((child, socket), host) in daemons.iter().zip(&hosts) {
        let figures = load(socket, "/v1/token/account-04242", 8, true);
        println!(
            "  {}: {:>7.0} req/s  p50 {:>5.0} µs  p99 {:>5.0} µs  RSS {:.1} MiB",
            host.name,
            figures.rate,
            figures.p50,
            figures.p99,
            rss_kib(child.id()) as f64 / 1024.0
        );
    }
    let before = provider.counters(|c| c.refresh_grants);
    let commits = transactions(&url);
    let statements = Statements::read(&url);
    std::thread::sleep(WINDOW);
    let fleet_refreshes = provider.counters(|c| c.refresh_grants) - before;
    let per_second = (transactions(&url) - commits) as f64 / WINDOW.as_secs_f64();
    let ran = Statements::read(&url).since(&statements);
    for (mut child, _) in daemons {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        provider.newest_grant().is_some_and(|grant| grant.2),
        "a grant died"
    );

    // The same accounts on one host's embedded vault, one daemon.
    let single = single_host(work.path(), &provider);
    let (mut child, socket) = serve(&single, None);
    let figures = load(&socket, "/v1/token/account-04242", 8, true);
    println!(
        "  one daemon, embedded vault: {:>7.0} req/s  p50 {:>5.0} µs  p99 {:>5.0} µs  RSS {:.1} MiB",
        figures.rate,
        figures.p50,
        figures.p99,
        rss_kib(child.id()) as f64 / 1024.0
    );
    let before = provider.counters(|c| c.refresh_grants);
    std::thread::sleep(WINDOW);
    let single_refreshes = provider.counters(|c| c.refresh_grants) - before;
    let _ = child.kill();
    let _ = child.wait();

    println!(
        "upstream refreshes of {LIVE} accounts ({LIFETIME} s tokens) in {} s: {HOSTS} daemons {fleet_refreshes}, one daemon alone {single_refreshes} (ratio {:.2})",
        WINDOW.as_secs(),
        f64::from(fleet_refreshes) / f64::from(single_refreshes.max(1))
    );
    println!(
        "database at steady state ({HOSTS} daemons): {:.0} statements/s, {per_second:.0} transactions/s; per upstream refresh: {:.1} statements",
        ran.total() as f64 / WINDOW.as_secs_f64(),
        ran.total() as f64 / f64::from(fleet_refreshes.max(1))
    );
    println!("  most run (calls/s):");
    for (query, calls) in ran.most_run(8) {
        println!("  {:>7.1}  {query}", calls as f64 / WINDOW.as_secs_f64());
    }
}

/// Calls per statement, as pg_stat_statements counts them (the daemons' statements only).
struct Statements(std::collections::HashMap<String, i64>);

impl Statements {
    fn read(url: &str) -> Statements {
        let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
        let rows = client
            .query(
                "SELECT query, calls FROM pg_stat_statements
                 WHERE query NOT LIKE '%pg_stat%' AND query NOT LIKE '%xact_commit%'",
                &[],
            )
            .unwrap();
        let mut calls = std::collections::HashMap::new();
        for row in rows {
            let query: String = row.get(0);
            let shown = query.split_whitespace().collect::<Vec<_>>().join(" ");
            *calls.entry(shown).or_insert(0) += row.get::<_, i64>(1);
        }
        Statements(calls)
    }

    fn since(&self, earlier: &Statements) -> Statements {
        let mut ran = self.0.clone();
        for (query, calls) in ran.iter_mut() {
            *calls -= earlier.0.get(query).copied().unwrap_or(0);
        }
        ran.retain(|_, calls| *calls > 0);
        Statements(ran)
    }

    fn total(&self) -> i64 {
        self.0.values().sum()
    }

    fn most_run(&self, n: usize) -> Vec<(String, i64)> {
        let mut all: Vec<(String, i64)> = self
            .0
            .iter()
            .map(|(query, calls)| (query.chars().take(110).collect(), *calls))
            .collect();
        all.sort_by_key(|(_, calls)| std::cmp::Reverse(*calls));
        all.truncate(n);
        all
    }
}

/// One host: its directory, master key file and fleet name.
struct Host {
    name: String,
    dir: PathBuf,
    key_file: PathBuf,
}

/// The fleet's first host, then the others joined and admitted through the library.
fn enroll(work: &Path, url: &str) -> Vec<Host> {
    let hosts: Vec<Host> = (0..HOSTS)
        .map(|n| Host {
            name: format!("bench-{n}"),
            dir: work.join(format!("host-{n}")),
            key_file: work.join(format!("host-{n}.key")),
        })
        .collect();
    let first = PgStore::init(
        &fleet(url, &hosts[0].name),
        &hosts[0].dir,
        KeySource::File(hosts[0].key_file.clone()),
        None,
    )
    .unwrap();
    for host in &hosts[1..] {
        let (tell, code) = std::sync::mpsc::channel();
        let (db, dir, key) = (
            fleet(url, &host.name),
            host.dir.clone(),
            host.key_file.clone(),
        );
        let joining = std::thread::spawn(move || {
            PgStore::join(
                &db,
                &dir,
                KeySource::File(key),
                None,
                Duration::from_secs(60),
                |code| tell.send(code.shown()).unwrap(),
            )
            .map(drop)
        });
        let code = JoinCode::parse(&code.recv().unwrap()).unwrap();
        first.admit(&host.name, &code).unwrap();
        joining.join().unwrap().unwrap();
    }
    hosts
}

fn fleet(url: &str, host: &str) -> FleetDb {
    FleetDb::new(url, None, host, None).unwrap()
}

fn unlock(host: &Host) -> Unlock {
    Unlock {
        source: Some(KeySource::File(host.key_file.clone())),
        passphrase_file: None,
    }
}

fn open(url: &str, host: &Host) -> AnyStore {
    AnyStore::Fleet(PgStore::open(&fleet(url, &host.name), &host.dir, &unlock(host)).unwrap())
}

/// `LIVE` accounts with real grants at the provider, their first tokens due at staggered times.
fn add_live_accounts(store: &mut AnyStore, provider: &DevProvider) {
    let config = AccountConfig {
        grant: Grant::RefreshToken {
            client_id: CLIENT_ID.into(),
            login: LoginMethod::Browser,
            identity: None,
        },
        endpoints: Endpoints::token_only("custom", provider.token_url()),
        client_auth: ClientAuth::Basic,
        scopes: vec!["openid".into()],
    };
    let secret = SecretString::from(CLIENT_SECRET.to_owned());
    let refresh: Vec<SecretString> = (0..LIVE)
        .map(|_| SecretString::from(provider.issue_refresh_token("openid")))
        .collect();
    let access = SecretString::from("at-bench-first".to_owned());
    let now = tokenvault::clock::now_unix();
    let names: Vec<String> = (0..LIVE).map(|n| format!("live-{n:03}")).collect();
    let updates: Vec<TokenUpdate<'_>> = (0..LIVE)
        .map(|n| TokenUpdate {
            access_token: &access,
            access_expires_at: Some(now + (n as i64 % LIFETIME as i64) + 1),
            new_refresh_token: Some(&refresh[n]),
            refresh_expires_at: None,
            validated: true,
        })
        .collect();
    let secrets = [(SecretKind::ClientSecret, &secret)];
    let accounts: Vec<NewAccount<'_>> = names
        .iter()
        .zip(&updates)
        .map(|(name, tokens)| NewAccount {
            name,
            config: &config,
            secrets: &secrets,
            tokens,
            validation_schedule: None,
            refresh_before: None,
            client_secret_expires_at: None,
            key_created_at: None,
            rotate_every: None,
        })
        .collect();
    store.insert_accounts(&accounts).unwrap();
}

/// One host's embedded vault with the same accounts (new grants for the live ones).
fn single_host(work: &Path, provider: &DevProvider) -> Host {
    let host = Host {
        name: "single".into(),
        dir: work.join("single"),
        key_file: work.join("single.key"),
    };
    let store = Store::init(&host.dir, KeySource::File(host.key_file.clone()), None).unwrap();
    let mut store = AnyStore::Local(store);
    support::add_accounts(&mut store, ACCOUNTS);
    add_live_accounts(&mut store, provider);
    host
}

/// `vault serve` for `host`, on the fleet at `url` when given; waits for its socket.
fn serve(host: &Host, url: Option<&str>) -> (Child, PathBuf) {
    let socket = host.dir.with_extension("sock");
    let mut command = Command::new(env!("CARGO_BIN_EXE_vault"));
    command
        .arg("--vault")
        .arg(&host.dir)
        .arg("--key-file")
        .arg(&host.key_file)
        .arg("--socket")
        .arg(&socket)
        .arg("serve")
        .env_remove("VAULT_MASTER_KEY")
        .env("VAULT_FLEET_HOST", &host.name);
    match url {
        Some(url) => command.env("VAULT_DATABASE_URL", url),
        None => command.env_remove("VAULT_DATABASE_URL"),
    };
    let child = spawn(&mut command);
    wait_for(&socket);
    (child, socket)
}

/// Transactions the cluster has committed or rolled back so far.
fn transactions(url: &str) -> i64 {
    let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    client
        .query_one(
            "SELECT (sum(xact_commit) + sum(xact_rollback))::bigint FROM pg_stat_database",
            &[],
        )
        .unwrap()
        .get(0)
}
