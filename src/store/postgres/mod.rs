//! Fleet mode's store: the same sealed records as the SQLite vault, on a PostgreSQL database
//! several hosts share. Every secret is sealed with the data key before it leaves the host; the
//! data key is stored only wrapped by each host's own master key (`host_keys`).
//!
//! Refreshes are coordinated by a **lease row**, never by a PostgreSQL lock held across the HTTP
//! call (a session lock vanishes at a database restart while its holder still holds the rotated
//! token): the lease is taken with one conditional `UPDATE` timed on the database's clock, the
//! request is sent only while the lease has room for it (measured on `CLOCK_BOOTTIME`, which keeps
//! counting through a suspend), and the outcome commits only if the account's `generation` and
//! `lease_id` are still the ones taken — the fencing token.
//!
//! `postgres` (the blocking client) runs on a thread of its own, so the store answers the
//! synchronous `RefreshStore` seam from inside the CLI's or the daemon's async runtime.

mod client_secrets;
mod grants;
mod hosts;
mod listen;
mod outbox;
mod passfile;
mod rekey;
mod rotations;

pub use grants::NamedGrant;
pub use hosts::{FleetStatus, JoinCode};
pub use listen::{ChangeFeed, Heard};
pub use rotations::RotationLease;

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use super::accounts::{settings_with_identity, vouched_settings};
use super::commits::{Failure, TokenUpdate};
use super::sealing::{secret_aad, settings_message, wrap_aad};
use super::{NewAccount, StoreError, SummaryRow, now};
use crate::account::{Account, AccountState, AccountSummary, SecretKind, Transition};
use crate::crypto::{self, KEY_LEN, Key, MacKey};
use crate::keys::{KeySource, PassphraseFile, Unlock};
use crate::secret::{Secret, SecretString};

/// How long a lease lasts (`L` of the design): the request timeout (30 s), the commit and a
/// margin. A holder that dies leaves the account to others after this.
pub const LEASE: Duration = Duration::from_secs(60);
/// The longest a token request may take (`H`), and the margin kept before the lease ends (`M`):
/// a request is sent only while `elapsed + H + M < L`.
const REQUEST_BUDGET: Duration = Duration::from_secs(35);
/// How long connecting to the database may take, unless the address says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a commit whose connection broke is tried again, and how often. It may outlast the
/// lease: the commit is fenced on the lease id, so it lands only if no host took the lease
/// since — as when the database was down for everyone — and then saves the rotated token.
const COMMIT_BUDGET: Duration = Duration::from_secs(120);
const COMMIT_RETRY: Duration = Duration::from_millis(500);
/// How long a refresh waits for another host's lease before saying so (a refresh takes well
/// under a second; a lease whose holder died runs out after `LEASE`).
const LEASE_WAIT: Duration = Duration::from_secs(2);
/// How often a host waiting for another's lease looks again, when it does not hear changes.
const LEASE_POLL: Duration = Duration::from_millis(100);
/// How long a host that claimed a validation firing has to prove it before another may.
const VALIDATION_CLAIM: Duration = Duration::from_secs(120);
/// How long a host that hears changes waits for one before looking anyway.
const LEASE_HEARD_WAIT: Duration = Duration::from_millis(500);

/// The fleet schema's migrations, in order; the database records how many it has applied.
const SCHEMA: &[&str] = &[
    include_str!("../../../schema/postgres/001_fleet.sql"),
    include_str!("../../../schema/postgres/002_joins.sql"),
    include_str!("../../../schema/postgres/003_validation_firings.sql"),
    include_str!("../../../schema/postgres/004_fleet_backoff.sql"),
    include_str!("../../../schema/postgres/005_alert_outbox.sql"),
    include_str!("../../../schema/postgres/006_join_codes.sql"),
    include_str!("../../../schema/postgres/007_grants.sql"),
    include_str!("../../../schema/postgres/008_notify.sql"),
    include_str!("../../../schema/postgres/009_fleet_rekey.sql"),
    include_str!("../../../schema/postgres/010_deadline_alerts.sql"),
    include_str!("../../../schema/postgres/011_validation_claims.sql"),
    include_str!("../../../schema/postgres/012_fleet_key_rotation.sql"),
    include_str!("../../../schema/postgres/013_lease_nonce.sql"),
    include_str!("../../../schema/postgres/014_rekey_pending.sql"),
];

/// A job for the database thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Where the fleet's database is and who this host is in it.
pub struct FleetDb {
    config: postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// The database as messages name it: never its password.
    shown: String,
    /// Where its password came from (`vault doctor` says), if there is one.
    password_from: Option<String>,
    pub host: String,
}

impl FleetDb {
    /// `url` (a `postgres://` URL or `key=value` string) with `password` when given apart, and
    /// `ca_file` naming the certificate authority the server's certificate must chain to (else
    /// `sslrootcert=` in the address, else the public web roots).
    pub fn new(
        url: &str,
        password: Option<&SecretString>,
        host: &str,
        ca_file: Option<&Path>,
    ) -> Result<FleetDb, StoreError> {
        let (url, extras) = libpq_extras(url);
        // The parser's cause can quote a character of the address, which may be the password's.
        let mut config: postgres::Config = url.parse().map_err(|err: postgres::Error| {
            StoreError::Database(format!(
                "the database address is not one PostgreSQL takes: {err}"
            ))
        })?;
        if config.get_user().is_none() {
            // As libpq: PGUSER, else the name of the user running this.
            let user = std::env::var("PGUSER")
                .ok()
                .filter(|user| !user.is_empty())
                .or_else(|| {
                    crate::users::user_name(&rustix::process::geteuid().as_raw().to_string()).ok()
                });
            if let Some(user) = user {
                config.user(&user);
            }
        }
        if config.get_connect_timeout().is_none() {
            // An unreachable database must not hold a command for minutes of TCP retries.
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // The address's own password first, as libpq.
        let password_from = match password {
            _ if config.get_password().is_some() => Some("the address".to_owned()),
            Some(password) => {
                config.password(password.expose().as_bytes());
                Some("[fleet] password_file".to_owned())
            }
            None => passfile::password(&config)?.map(|(password, from)| {
                config.password(password.expose().as_bytes());
                from
            }),
        };
        if extras.verify || (!extras.sslmode_given && !all_local(&config)) {
            // TLS always checks the certificate chain and the host name: `verify-full`.
            config.ssl_mode(postgres::config::SslMode::Require);
        }
        let roots = ca_file.map(Path::to_owned).or(extras.root_cert);
        let tls = tls_connector(roots.as_deref())?;
        let shown = shown(&config);
        Ok(FleetDb {
            config,
            tls,
            shown,
            password_from,
            host: host.to_owned(),
        })
    }

    /// The database as messages may name it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Where the database password came from ("the address", "[fleet] password_file",
    /// "PGPASSWORD" or the password file's path), if there is one.
    pub fn password_from(&self) -> Option<&str> {
        self.password_from.as_deref()
    }
}

/// What libpq's address takes and tokio-postgres does not, taken out of the address.
#[derive(Default)]
struct LibpqExtras {
    /// `sslmode=verify-full` or `verify-ca`: TLS required, the certificate verified.
    verify: bool,
    /// Any `sslmode` was given (an explicit `disable` or `prefer` is the user's choice).
    sslmode_given: bool,
    /// `sslrootcert=PATH`
    root_cert: Option<PathBuf>,
}

fn libpq_extras(address: &str) -> (String, LibpqExtras) {
    let mut extras = LibpqExtras::default();
    let mut keep = |key: &str, value: &str| match (key, value) {
        ("sslmode", "verify-full" | "verify-ca") => {
            extras.verify = true;
            extras.sslmode_given = true;
            false
        }
        ("sslmode", _) => {
            extras.sslmode_given = true;
            true
        }
        ("sslrootcert", path) => {
            extras.root_cert = Some(PathBuf::from(path));
            false
        }
        _ => true,
    };
    let rewritten = match url::Url::parse(address) {
        Ok(mut url) if matches!(url.scheme(), "postgres" | "postgresql") => {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(key, value)| keep(key, value))
                .map(|(key, value)| (key.into_owned(), value.into_owned()))
                .collect();
            url.set_query(None);
            if !pairs.is_empty() {
                url.query_pairs_mut().extend_pairs(pairs);
            }
            url.to_string()
        }
        _ => address
            .split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                keep(key, value)
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    (rewritten, extras)
}

/// Whether every host of the address is this machine (a Unix socket or loopback), where TLS
/// adds nothing.
fn all_local(config: &postgres::Config) -> bool {
    config.get_hosts().iter().all(|host| match host {
        postgres::config::Host::Unix(_) => true,
        postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    })
}

/// rustls with the given certificate authority (PEM), else the public web roots.
fn tls_connector(
    roots: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Some(path) => {
            let shown = path.display();
            let certificates = CertificateDer::pem_file_iter(path).map_err(|err| {
                StoreError::Database(format!("cannot read the CA file {shown}: {err}"))
            })?;
            for certificate in certificates {
                let certificate = certificate.map_err(|err| {
                    StoreError::Database(format!(
                        "the CA file {shown} is not PEM certificates: {err}"
                    ))
                })?;
                store.add(certificate).map_err(|err| {
                    StoreError::Database(format!(
                        "the CA file {shown} holds an unusable certificate: {err}"
                    ))
                })?;
            }
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| StoreError::Database(format!("TLS: {err}")))?
    .with_root_certificates(store)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The database as messages name it: user, hosts, database — never the password.
fn shown(config: &postgres::Config) -> String {
    let hosts = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{}@{hosts}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

/// The database thread's connection, made again when it breaks.
struct Connection {
    config: postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    client: Option<postgres::Client>,
}

impl Connection {
    fn client(&mut self) -> Result<&mut postgres::Client, postgres::Error> {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => self.config.connect(self.tls.clone())?,
        };
        Ok(self.client.insert(client))
    }
}

/// The handle to the database thread; clones share it.
#[derive(Clone)]
struct Db {
    jobs: mpsc::Sender<Job>,
    /// How to make another connection (the listening one).
    address: Arc<(postgres::Config, tokio_postgres_rustls::MakeRustlsConnect)>,
}

impl Db {
    fn start(fleet: &FleetDb) -> Db {
        let (jobs, queue) = mpsc::channel::<Job>();
        let mut connection = Connection {
            config: fleet.config.clone(),
            tls: fleet.tls.clone(),
            client: None,
        };
        std::thread::spawn(move || {
            for job in queue {
                job(&mut connection);
            }
        });
        Db {
            jobs,
            address: Arc::new((fleet.config.clone(), fleet.tls.clone())),
        }
    }

    /// Starts hearing the fleet's changes on a connection of its own.
    fn listen(&self) -> Arc<listen::Changes> {
        let (mut config, tls) = (*self.address).clone();
        config.application_name(listen::APPLICATION_NAME);
        listen::Changes::listen(move || config.connect(tls.clone()))
    }

    /// Runs `work` on the database thread and waits for its result.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |connection| {
            let outcome = match connection.client() {
                Ok(client) => work(client),
                Err(err) => Err(database_error(&err)),
            };
            let _ = answer.send(outcome);
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Database("its connection thread stopped".into()))?;
        result
            .recv()
            .map_err(|_| StoreError::Database("its connection thread stopped".into()))?
    }
}

fn database_error(err: &postgres::Error) -> StoreError {
    // The driver's message names the server's complaint, never a parameter's value. A closed
    // connection or an I/O failure is the connection's, not the statement's: worth trying
    // again. A certificate this host does not trust is said as such (no statement ran).
    if untrusted_certificate(err).is_some() {
        return StoreError::UntrustedCertificate(describe(err));
    }
    let lost = err.is_closed()
        || std::error::Error::source(err).is_some_and(|source| source.is::<std::io::Error>());
    let text = describe(err);
    let text = match hint(err) {
        Some(hint) => format!("{text}; {hint}"),
        None => text,
    };
    if lost {
        StoreError::DatabaseLost(text)
    } else {
        StoreError::Database(text)
    }
}

/// The certificate problem of a TLS handshake that failed on the server's certificate.
fn untrusted_certificate(err: &postgres::Error) -> Option<&rustls::CertificateError> {
    let io = std::error::Error::source(err)?.downcast_ref::<std::io::Error>()?;
    match io.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(problem) => Some(problem),
        _ => None,
    }
}

/// A server error's message (its detail, which can quote values, is left out), else the
/// driver's words and their cause ("error connecting to server: Connection refused"), which the
/// driver's own message leaves out.
fn describe(err: &postgres::Error) -> String {
    match (err.as_db_error(), std::error::Error::source(err)) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(cause)) => format!("{err}: {cause}"),
        (None, None) => err.to_string(),
    }
}

/// What to do about a refused or missing password.
fn hint(err: &postgres::Error) -> Option<&'static str> {
    // The driver tells a missing password only by its cause's words.
    let missing =
        std::error::Error::source(err).is_some_and(|cause| cause.to_string() == "password missing");
    if missing {
        Some(
            "put the password in a 0600 file named by [fleet] password_file in config.toml, or in ~/.pgpass (PGPASSFILE) as for psql",
        )
    } else if err.code() == Some(&postgres::error::SqlState::INVALID_PASSWORD) {
        Some(
            "check the password: it comes from the address, else [fleet] password_file, else PGPASSWORD, else ~/.pgpass (PGPASSFILE)",
        )
    } else {
        None
    }
}

impl From<postgres::Error> for StoreError {
    fn from(err: postgres::Error) -> StoreError {
        database_error(&err)
    }
}

/// The fleet vault on PostgreSQL, opened with this host's master key.
pub struct PgStore {
    db: Db,
    dir: PathBuf,
    host: String,
    vault_id: String,
    data_key: Key,
    settings_key: MacKey,
    /// Kept to seal it to a host being admitted.
    raw_data_key: Secret<[u8; KEY_LEN]>,
    key_version: i64,
    /// This host's master key: it wraps the data key a rekey delivers, and this host's own key.
    master: Secret<[u8; KEY_LEN]>,
    /// The fleet's changes, heard on a connection of their own (daemons only).
    changes: Option<Arc<listen::Changes>>,
    /// Lease takes whose answer was lost, by account: the nonce that takes such a lease again.
    unsure_leases: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// How long `guard_refresh` waits for another host's lease itself.
    lease_wait: Duration,
}

impl PgStore {
    /// Turns the empty database at `url` into a fleet vault whose first host is `host`, its data
    /// key wrapped by the master key at `key_source`.
    pub fn init(
        fleet: &FleetDb,
        dir: &Path,
        key_source: KeySource,
        passphrase: PassphraseFile<'_>,
    ) -> Result<PgStore, StoreError> {
        let host = fleet.host.as_str();
        // The host's own directory keeps config.toml and the daemon's audit log.
        super::create_private_dir(dir)?;
        let db = Db::start(fleet);
        let exists = db.run(|client| {
            Ok(client
                .query_one("SELECT to_regclass('fleet_meta') IS NOT NULL", &[])?
                .get::<_, bool>(0))
        })?;
        if exists {
            return Err(StoreError::VaultExists(PathBuf::from(fleet.shown())));
        }
        let vault_id = super::hex(crypto::random_bytes::<16>()?.expose());
        let master = key_source.load_or_create(&vault_id, 1, passphrase)?;
        let data_key = crypto::random_bytes::<KEY_LEN>()?;
        let wrapped = Key::from_bytes(&master).seal(
            data_key.expose(),
            host_wrap_aad(&vault_id, 1, host).as_bytes(),
        )?;
        let (id, owner, record) = (vault_id.clone(), host.to_owned(), key_source.to_record());
        db.run(move |client| {
            let mut tx = client.transaction()?;
            for script in SCHEMA {
                tx.batch_execute(script)?;
            }
            tx.execute(
                "INSERT INTO fleet_meta (key, value) VALUES ('vault_id', $1), ('key_version', '1'), ('schema', $2)",
                &[&id, &SCHEMA.len().to_string()],
            )?;
            tx.execute(
                "INSERT INTO hosts (host, key_source, master_version) VALUES ($1, $2, 1)",
                &[&owner, &record],
            )?;
            tx.execute(
                "INSERT INTO host_keys (host, key_version, wrapped) VALUES ($1, 1, $2)",
                &[&owner, &wrapped],
            )?;
            tx.commit()?;
            Ok(())
        })?;
        let store = PgStore::with_data_key(db, dir, host, vault_id, (1, data_key), &master);
        store.ensure_host_key(&rekey::host_record(&store.db, host)?)?;
        Ok(store)
    }

    fn with_data_key(
        db: Db,
        dir: &Path,
        host: &str,
        vault_id: String,
        (key_version, raw): (i64, Secret<[u8; KEY_LEN]>),
        master: &Secret<[u8; KEY_LEN]>,
    ) -> PgStore {
        PgStore {
            db,
            dir: dir.to_owned(),
            host: host.to_owned(),
            vault_id,
            data_key: Key::from_bytes(&raw),
            settings_key: MacKey::derive(&raw),
            raw_data_key: raw,
            key_version,
            master: master.clone(),
            changes: None,
            unsure_leases: Default::default(),
            lease_wait: LEASE_WAIT,
        }
    }

    /// Uses data key `raw` of `version` from now on (after a rekey, this host's or another's).
    fn adopt_data_key(&mut self, version: i64, raw: Secret<[u8; KEY_LEN]>) {
        self.data_key = Key::from_bytes(&raw);
        self.settings_key = MacKey::derive(&raw);
        self.raw_data_key = raw;
        self.key_version = version;
    }

    /// The nonce of this account's last lease take whose answer was lost, if any.
    fn unsure_lease(&self, name: &str) -> Option<i64> {
        self.unsure_leases
            .lock()
            .ok()
            .and_then(|unsure| unsure.get(name).copied())
    }

    fn remember_unsure_lease(&self, name: &str, nonce: Option<i64>) {
        if let Ok(mut unsure) = self.unsure_leases.lock() {
            match nonce {
                Some(nonce) => unsure.insert(name.to_owned(), nonce),
                None => unsure.remove(name),
            };
        }
    }

    /// Hears the fleet's changes from now on (a daemon does: waits for other hosts' refreshes
    /// end when they commit, and its duties wake on changes instead of polling).
    pub fn listen(&mut self) {
        if self.changes.is_none() {
            self.changes = Some(self.db.listen());
        }
    }

    /// Makes `guard_refresh` give up at once when another host holds the lease: a daemon waits
    /// itself, without holding the store every request needs.
    pub fn leave_lease_waits_to_caller(&mut self) {
        self.lease_wait = Duration::ZERO;
    }

    /// The fleet's changes as this host hears them, once `listen` was called.
    pub fn change_feed(&self) -> Option<ChangeFeed> {
        self.changes.as_ref().map(|changes| changes.feed())
    }

    /// Opens the fleet vault at `url` as `host`, with the master key `unlock` names or the one
    /// the host enrolled with.
    pub fn open(fleet: &FleetDb, dir: &Path, unlock: &Unlock) -> Result<PgStore, StoreError> {
        let host = fleet.host.as_str();
        let db = Db::start(fleet);
        let (vault_id, key_version) = fleet_meta(&db)?;
        let record = rekey::host_record(&db, host)?;
        let owner = host.to_owned();
        let (held_version, wrapped) = db.run(move |client| {
            let row = client
                .query_opt(
                    "SELECT key_version, wrapped FROM host_keys WHERE host = $1
                     ORDER BY key_version DESC LIMIT 1",
                    &[&owner],
                )?
                .ok_or_else(|| StoreError::NotDelivered(owner.clone()))?;
            Ok((row.get::<_, i64>(0), row.get::<_, Vec<u8>>(1)))
        })?;
        let key_source = match &unlock.source {
            Some(source) => source.clone(),
            None => KeySource::from_record(&record.key_source)?,
        };
        let master = key_source.load(
            &vault_id,
            record.master_version,
            unlock.passphrase_file.as_deref(),
        )?;
        let opened = Key::from_bytes(&master)
            .open(
                &wrapped,
                host_wrap_aad(&vault_id, held_version, host).as_bytes(),
            )
            .map_err(|_| StoreError::WrongMasterKey(key_source.describe()))?;
        let mut raw = exact_key(opened.expose())?;
        if held_version != key_version {
            // Another host rekeyed the fleet since this one last opened it.
            let holder = rekey::Holder {
                vault_id: &vault_id,
                host,
                master: &master,
                record: &record,
            };
            raw = rekey::take_delivery(&db, &holder, held_version, &raw, key_version)?;
        }
        let store = PgStore::with_data_key(db, dir, host, vault_id, (key_version, raw), &master);
        store.ensure_host_key(&record)?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn account(&self, name: &str) -> Result<Account, StoreError> {
        let name = name.to_owned();
        let row = self.db.run(move |client| {
            client
                .query_opt(&format!("{SELECT_ACCOUNT} WHERE name = $1"), &[&name])?
                .ok_or(StoreError::NoSuchAccount(name))
        })?;
        read_account(&row, &self.settings_key)
    }

    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows = self
            .db
            .run(|client| Ok(client.query(&format!("{SELECT_ACCOUNT} ORDER BY name"), &[])?))?;
        rows.iter()
            .map(|row| read_account(row, &self.settings_key))
            .collect()
    }

    /// The id of this fleet vault.
    pub fn vault_id(&self) -> &str {
        &self.vault_id
    }

    /// A number that changes whenever an account is added, changed or removed, on any host.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.db.run(|client| {
            // Every committed insert or update leaves a row version with a newer xmin; a
            // removal changes the count. Grants count too: the daemon serves by them.
            Ok(client
                .query_one(
                    "SELECT (SELECT COALESCE(max(xmin::text::bigint), 0) * 1000003 + count(*)
                             FROM accounts)
                          + (SELECT COALESCE(max(xmin::text::bigint), 0) * 1009 + count(*)
                             FROM grants)",
                    &[],
                )?
                .get(0))
        })
    }

    /// Records whose grant the account holds (a login by another, allowed, user), with its
    /// settings signed anew.
    pub fn set_identity(
        &mut self,
        account: &Account,
        identity: Option<&crate::oauth::identity::Identity>,
    ) -> Result<(), StoreError> {
        let config_json = settings_with_identity(account, identity)?;
        let tag =
            self.settings_key
                .sign(&settings_message(account.id, &account.name, &config_json));
        let (id, name, host) = (account.id, account.name.clone(), self.host.clone());
        let shown = identity.map(|identity| identity.shown().to_owned());
        let version = self.key_version;
        self.db.run(move |client| {
            let mut tx = client.transaction()?;
            still_key_version(&mut tx, version)?;
            tx.execute(
                "UPDATE accounts SET config = $2, config_mac = $3 WHERE id = $1",
                &[&id, &config_json, &tag],
            )?;
            log_event(&mut tx, &host, &name, "identity", shown.as_deref())?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Deletes account `name` with its secrets.
    pub fn remove_account(&mut self, name: &str) -> Result<(), StoreError> {
        let (name, host) = (name.to_owned(), self.host.clone());
        self.db.run(move |client| {
            let mut tx = client.transaction()?;
            if tx.execute("DELETE FROM accounts WHERE name = $1", &[&name])? == 0 {
                return Err(StoreError::NoSuchAccount(name));
            }
            log_event(&mut tx, &host, &name, "removed", None)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Sets (or clears) account `name`'s own validation schedule and refresh-ahead margin;
    /// `None` leaves one as it is.
    pub fn set_schedule(
        &mut self,
        name: &str,
        schedule: Option<Option<&str>>,
        refresh_before: Option<Option<u64>>,
    ) -> Result<(), StoreError> {
        let name = name.to_owned();
        let schedule = schedule.map(|cron| cron.map(str::to_owned));
        let before = refresh_before.map(|seconds| seconds.map(|s| s.min(i64::MAX as u64) as i64));
        self.db.run(move |client| {
            let changed = client.execute(
                "UPDATE accounts SET
                     validation_schedule = CASE WHEN $2 THEN $3 ELSE validation_schedule END,
                     refresh_before = CASE WHEN $4 THEN $5 ELSE refresh_before END
                 WHERE name = $1",
                &[
                    &name,
                    &schedule.is_some(),
                    &schedule.flatten(),
                    &before.is_some(),
                    &before.flatten(),
                ],
            )?;
            if changed == 0 {
                return Err(StoreError::NoSuchAccount(name));
            }
            Ok(())
        })
    }

    /// Takes the validation of account `name` at firing `firing` for this host; false when
    /// another host took it (every host computes the same firing).
    pub fn claim_validation(&self, name: &str, firing: i64) -> Result<bool, StoreError> {
        let (name, seconds) = (name.to_owned(), VALIDATION_CLAIM.as_secs_f64());
        self.db.run(move |client| {
            Ok(client.execute(
                "UPDATE accounts SET validated_firing = $2,
                     validation_claim_until = clock_timestamp() + make_interval(secs => $3)
                 WHERE name = $1 AND COALESCE(validated_firing, 0) < $2",
                &[&name, &firing, &seconds],
            )? == 1)
        })
    }

    /// Takes over the validations whose claim ran out before they were done (the claiming
    /// host died, or its proof failed): returns the accounts this host now validates.
    pub fn claim_abandoned_validations(&self) -> Result<Vec<String>, StoreError> {
        let seconds = VALIDATION_CLAIM.as_secs_f64();
        let states = [
            AccountState::Active.as_str(),
            AccountState::Degraded.as_str(),
        ];
        self.db.run(move |client| {
            Ok(client
                .query(
                    "UPDATE accounts SET
                         validation_claim_until = clock_timestamp() + make_interval(secs => $1)
                     WHERE validated_firing IS NOT NULL
                         AND COALESCE(last_validated_at, 0) < validated_firing
                         AND validation_claim_until < clock_timestamp()
                         AND state = ANY($2)
                     RETURNING name",
                    &[&seconds, &states.as_slice()],
                )?
                .iter()
                .map(|row| row.get(0))
                .collect())
        })
    }

    /// Shows `visit` every account's summary. The daemon reloads them whenever any host
    /// commits: no settings are parsed or verified here (as in the embedded vault's).
    pub fn visit_summaries(&self, visit: impl FnMut(&SummaryRow<'_>)) -> Result<(), StoreError> {
        self.visit_summaries_of(None, visit)
    }

    /// The accounts this host heard of since it last asked (a daemon reloads just those).
    pub fn changed_accounts(&self) -> Vec<i64> {
        self.changes
            .as_ref()
            .map(|changes| changes.take_changed_accounts())
            .unwrap_or_default()
    }

    /// Visits the summaries of the accounts `ids` names (every account's when `None`).
    pub fn visit_summaries_of(
        &self,
        ids: Option<Vec<i64>>,
        mut visit: impl FnMut(&SummaryRow<'_>),
    ) -> Result<(), StoreError> {
        let rows = self.db.run(move |client| {
            Ok(client.query(
                "SELECT name, state, access_expires_at, last_refresh_at, last_validated_at,
                        validation_schedule, refresh_before, (config::jsonb -> 'scopes')::text,
                        last_error
                 FROM accounts WHERE $1::bigint[] IS NULL OR id = ANY($1)",
                &[&ids],
            )?)
        })?;
        for row in &rows {
            let name: &str = row.get(0);
            let state: &str = row.get(1);
            let state = AccountState::parse(state).ok_or_else(|| {
                StoreError::BadConfig(name.to_owned(), format!("unknown state {state:?}"))
            })?;
            visit(&SummaryRow {
                name,
                state,
                access_expires_at: row.get(2),
                last_refresh_at: row.get(3),
                last_validated_at: row.get(4),
                validation_schedule: row.get(5),
                refresh_before: row
                    .get::<_, Option<i64>>(6)
                    .map(|seconds| seconds.max(0) as u64),
                scopes: row.get(7),
                last_error: row.get(8),
            });
        }
        Ok(())
    }

    /// Every account's summary, by name.
    pub fn summaries(&self) -> Result<Vec<AccountSummary>, StoreError> {
        Ok(self
            .accounts()?
            .into_iter()
            .map(|account| AccountSummary {
                scope: account.config.scopes.join(" "),
                name: account.name,
                state: account.state,
                access_expires_at: account.access_expires_at,
                last_refresh_at: account.last_refresh_at,
                last_validated_at: account.last_validated_at,
                validation_schedule: account.validation_schedule,
                refresh_before: account.refresh_before,
                last_error: account.last_error,
            })
            .collect())
    }

    pub fn secret(
        &self,
        account: &Account,
        kind: SecretKind,
    ) -> Result<Option<SecretString>, StoreError> {
        let id = account.id;
        let row = self.db.run(move |client| {
            Ok(client.query_opt(
                "SELECT key_version, sealed FROM secrets WHERE account_id = $1 AND kind = $2",
                &[&id, &kind.as_str()],
            )?)
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        if row.get::<_, i64>(0) > self.key_version {
            // Another host rekeyed the fleet meanwhile: this process's key is the old one.
            return Err(StoreError::KeyChanged);
        }
        let tampered = || StoreError::SecretTampered {
            account: account.name.clone(),
            kind: kind.as_str(),
        };
        let plain = self
            .data_key
            .open(
                &row.get::<_, Vec<u8>>(1),
                secret_aad(id, kind, row.get(0)).as_bytes(),
            )
            .map_err(|_| tampered())?;
        plain.into_string().map(Some).ok_or_else(tampered)
    }

    pub fn has_secret(&self, account: &Account, kind: SecretKind) -> Result<bool, StoreError> {
        let id = account.id;
        self.db.run(move |client| {
            Ok(client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM secrets WHERE account_id = $1 AND kind = $2)",
                    &[&id, &kind.as_str()],
                )?
                .get(0))
        })
    }

    /// Stores new accounts with their secrets and first tokens in one transaction: all of
    /// them, or none (a taken name, a failed write). Row ids are drawn first, as the seals bind
    /// them.
    pub fn insert_accounts(&mut self, accounts: &[NewAccount<'_>]) -> Result<(), StoreError> {
        let count = i64::try_from(accounts.len()).unwrap_or(i64::MAX);
        let ids: Vec<i64> = self.db.run(move |client| {
            Ok(client
                .query(
                    "SELECT nextval('accounts_id_seq') FROM generate_series(1, $1::bigint)",
                    &[&count],
                )?
                .iter()
                .map(|row| row.get(0))
                .collect())
        })?;
        let rows = accounts
            .iter()
            .zip(ids)
            .map(|(new, id)| self.prepare_row(new, id))
            .collect::<Result<Vec<_>, _>>()?;
        let (host, at, version) = (self.host.clone(), now(), self.key_version);
        self.db.run(move |client| {
            let mut tx = client.transaction()?;
            still_key_version(&mut tx, version)?;
            for row in &rows {
                row.insert(&mut tx, at)?;
                log_event(&mut tx, &host, &row.name, "added", Some(row.kind))?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// One new account's row, settings tag and sealed secrets, for row `id`.
    fn prepare_row(&self, new: &NewAccount<'_>, id: i64) -> Result<NewRow, StoreError> {
        let config = serde_json::to_string(new.config)
            .map_err(|err| StoreError::BadConfig(new.name.to_owned(), err.to_string()))?;
        Ok(NewRow {
            id,
            name: new.name.to_owned(),
            tag: self
                .settings_key
                .sign(&settings_message(id, new.name, &config)),
            config,
            kind: new.config.grant.kind().as_str(),
            sealed: self.seal_all(id, new.secrets, new.tokens)?,
            schedule: new.validation_schedule.map(str::to_owned),
            refresh_before: new
                .refresh_before
                .map(|seconds| seconds.min(i64::MAX as u64) as i64),
            client_secret_expires_at: new.client_secret_expires_at,
            key_created_at: new.key_created_at,
            rotate_every: new.rotate_every,
            access_expires_at: new.tokens.access_expires_at,
            refresh_expires_at: new.tokens.refresh_expires_at,
            validated: new.tokens.validated,
        })
    }

    /// The account's secrets and tokens sealed for row `id`, as (kind, blob, key version).
    fn seal_all(
        &self,
        id: i64,
        secrets: &[(SecretKind, &SecretString)],
        tokens: &TokenUpdate<'_>,
    ) -> Result<Vec<Sealed>, StoreError> {
        let mut all: Vec<(SecretKind, &SecretString)> = secrets.to_vec();
        all.push((SecretKind::AccessToken, tokens.access_token));
        if let Some(refresh) = tokens.new_refresh_token {
            all.push((SecretKind::RefreshToken, refresh));
        }
        all.into_iter()
            .map(|(kind, value)| self.seal(id, kind, value))
            .collect()
    }

    fn seal(&self, id: i64, kind: SecretKind, value: &SecretString) -> Result<Sealed, StoreError> {
        let blob = self.data_key.seal(
            value.expose().as_bytes(),
            secret_aad(id, kind, self.key_version).as_bytes(),
        )?;
        Ok(Sealed {
            account_id: id,
            kind,
            blob,
            version: self.key_version,
        })
    }
}

/// The lease on one account's refresh: the fencing token its commit must still match.
pub struct Lease {
    db: Db,
    account_id: i64,
    lease_id: i64,
    /// When it was taken, on `CLOCK_BOOTTIME`.
    taken_at: Duration,
}

impl super::commits::RefreshGuard for Lease {
    /// A token request is sent only if it can finish (`H`) with a margin (`M`) before the lease
    /// can pass to another host.
    fn may_send(&self) -> bool {
        boottime().saturating_sub(self.taken_at) + REQUEST_BUDGET < LEASE
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Released when nothing was committed (a commit clears it). A release that meets the
        // database restarting is tried again while the lease lasts: lost, it would keep every
        // host from refreshing the account until it ran out.
        release_lease(
            self.db.clone(),
            (self.account_id, self.lease_id),
            std::time::Instant::now() + LEASE,
        );
    }
}

/// Queues the release of lease `lease` of account `id` on the database thread (never waits);
/// on failure it is queued again half a second later, until `until`.
fn release_lease(db: Db, (id, lease): (i64, i64), until: std::time::Instant) {
    let again = db.clone();
    let _ = db.jobs.send(Box::new(move |connection| {
        let released = connection.client().and_then(|client| {
            client.execute(
                "UPDATE accounts SET lease_id = NULL, lease_holder = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_id = $2",
                &[&id, &lease],
            )
        });
        if released.is_err() && std::time::Instant::now() < until {
            std::thread::spawn(move || {
                std::thread::sleep(COMMIT_RETRY);
                release_lease(again, (id, lease), until);
            });
        }
    }));
}

/// Seconds since boot, suspend included: a lease taken before a laptop slept has aged.
fn boottime() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        now.tv_sec.max(0) as u64,
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

impl super::RefreshStore for PgStore {
    type Guard = Lease;

    fn account(&self, name: &str) -> Result<Account, StoreError> {
        PgStore::account(self, name)
    }

    fn secret(
        &self,
        account: &Account,
        kind: SecretKind,
    ) -> Result<Option<SecretString>, StoreError> {
        PgStore::secret(self, account, kind)
    }

    /// Takes the account's lease once it is free or expired (the database's clock decides),
    /// waiting up to `LEASE_WAIT` for another host's refresh.
    fn guard_refresh(&self, name: &str) -> Result<Lease, StoreError> {
        let give_up = boottime() + self.lease_wait;
        let mut known_id = None;
        loop {
            // What was heard of the account before looking: a commit after the look wakes the
            // wait below. (The first look learns the account's id.)
            let heard_before = known_id
                .zip(self.changes.as_ref())
                .map(|(id, changes)| changes.account_changes(id));
            let (owner, host) = (name.to_owned(), self.host.clone());
            let seconds = LEASE.as_secs_f64();
            let nonce = i64::from_le_bytes(*crypto::random_bytes::<8>()?.expose());
            let unsure = self.unsure_lease(name);
            let taken = self.db.run(move |client| {
                let row = client.query_opt(
                    "UPDATE accounts SET lease_id = nextval('lease_seq'), lease_holder = $2,
                         lease_until = clock_timestamp() + make_interval(secs => $3),
                         lease_nonce = $4
                     WHERE name = $1 AND (lease_nonce = $5 OR (
                         (lease_until IS NULL OR lease_until < clock_timestamp())
                         AND (pause_until IS NULL OR pause_until <= clock_timestamp())))
                     RETURNING id, lease_id",
                    &[&owner, &host, &seconds, &nonce, &unsure],
                )?;
                Ok(row.map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1))))
            });
            // An answer lost as the take committed: the lease may be this process's, and only
            // the nonce can tell — the next take of this account presents it.
            self.remember_unsure_lease(
                name,
                matches!(taken, Err(StoreError::DatabaseLost(_))).then_some(nonce),
            );
            if let Some((account_id, lease_id)) = taken? {
                return Ok(Lease {
                    db: self.db.clone(),
                    account_id,
                    lease_id,
                    taken_at: boottime(),
                });
            }
            // Paused for the fleet, held by another host, or no such account.
            let owner = name.to_owned();
            let (account_id, paused_for) = self.db.run(move |client| {
                let row = client
                    .query_opt(
                        "SELECT id, EXTRACT(EPOCH FROM pause_until - clock_timestamp())::float8
                         FROM accounts WHERE name = $1",
                        &[&owner],
                    )?
                    .ok_or(StoreError::NoSuchAccount(owner))?;
                Ok((row.get::<_, i64>(0), row.get::<_, Option<f64>>(1)))
            })?;
            if let Some(seconds) = paused_for.filter(|seconds| *seconds > 0.0) {
                return Err(StoreError::Paused {
                    account: name.to_owned(),
                    seconds: seconds.ceil() as u64,
                });
            }
            if boottime() > give_up {
                // A refresh takes a moment; longer, the holder may have died, and its lease
                // runs out on its own. Callers get the cached token or a quick "try again".
                return Err(StoreError::LeaseHeld(name.to_owned()));
            }
            // The holder's commit (or failure) notifies; without a listening connection, poll.
            known_id = Some(account_id);
            let heard = self.changes.as_ref().is_some_and(|changes| {
                let seen = heard_before.unwrap_or_else(|| changes.account_changes(account_id));
                changes.wait_for_account(account_id, seen, LEASE_HEARD_WAIT)
            });
            if !heard {
                std::thread::sleep(LEASE_POLL);
            }
        }
    }

    fn commit_refresh(
        &mut self,
        lease: &Lease,
        account: &Account,
        update: &TokenUpdate<'_>,
    ) -> Result<Option<Transition>, StoreError> {
        self.commit_tokens(Some(lease), account, update)
    }

    /// A passing failure also pauses the account for the whole fleet: exponential from 5 s
    /// (capped at an hour), at least the provider's `Retry-After`.
    fn commit_failure(
        &mut self,
        lease: &Lease,
        account: &Account,
        failure: &Failure<'_>,
    ) -> Result<Option<Transition>, StoreError> {
        let id = account.id;
        let passing = failure.state == AccountState::Degraded;
        let retry_after = failure.retry_after.unwrap_or(0) as f64;
        let reason = Some(failure.reason);
        self.fenced_commit(Some(lease), account, failure.state, reason, move |tx, _| {
            if passing {
                tx.execute(
                    "UPDATE accounts SET failures = failures + 1,
                         pause_until = clock_timestamp() + make_interval(secs =>
                             GREATEST($2, LEAST(3600, 5 * power(2, LEAST(failures, 20)))))
                     WHERE id = $1",
                    &[&id, &retry_after],
                )?;
            }
            Ok(())
        })
    }
}

impl PgStore {
    /// Replaces the account's grant with a new authorization's tokens (`vault login`): it wins
    /// over a refresh in flight on any host, whose commit then finds the generation moved.
    pub fn replace_grant(
        &mut self,
        account: &Account,
        update: &TokenUpdate<'_>,
    ) -> Result<Option<Transition>, StoreError> {
        self.commit_tokens(None, account, update)
    }

    /// Records tokens: sealed, the account active, its failures and pause cleared.
    fn commit_tokens(
        &mut self,
        lease: Option<&Lease>,
        account: &Account,
        update: &TokenUpdate<'_>,
    ) -> Result<Option<Transition>, StoreError> {
        let mut sealed =
            vec![self.seal(account.id, SecretKind::AccessToken, update.access_token)?];
        if let Some(refresh) = update.new_refresh_token {
            sealed.push(self.seal(account.id, SecretKind::RefreshToken, refresh)?);
        }
        let (access_expires_at, refresh_expires_at, validated) = (
            update.access_expires_at,
            update.refresh_expires_at,
            update.validated,
        );
        let id = account.id;
        self.fenced_commit(lease, account, AccountState::Active, None, move |tx, at| {
            Sealed::put_all(&sealed, tx, at)?;
            tx.execute(
                "UPDATE accounts SET access_expires_at = $2, last_refresh_at = $3,
                     refresh_expires_at = COALESCE($4, refresh_expires_at),
                     last_validated_at = CASE WHEN $5 THEN $3 ELSE last_validated_at END,
                     failures = 0, pause_until = NULL
                 WHERE id = $1",
                &[
                    &id,
                    &access_expires_at,
                    &at,
                    &refresh_expires_at,
                    &validated,
                ],
            )?;
            Ok(())
        })
    }

    /// One transaction, applied only while the account's generation and lease are the ones
    /// `lease` took (with no lease: whatever was in flight): the generation advances, the lease
    /// is cleared and recorded as committed, the state set (a change logged, its alert written),
    /// and `apply` writes the rest.
    fn fenced_commit(
        &mut self,
        lease: Option<&Lease>,
        account: &Account,
        state: AccountState,
        reason: Option<&str>,
        apply: impl Fn(&mut postgres::Transaction<'_>, i64) -> Result<(), StoreError>
        + Send
        + Sync
        + 'static,
    ) -> Result<Option<Transition>, StoreError> {
        let (id, generation) = (account.id, account.generation);
        let lease_id = lease.map(|lease| lease.lease_id);
        let (name, host) = (account.name.clone(), self.host.clone());
        let reason = reason.map(str::to_owned);
        let stated = reason.clone();
        let apply = std::sync::Arc::new(apply);
        // The provider's answer (a rotated refresh token) exists only in this process: a commit
        // that fails because the connection broke is sent again, fenced as before, until it
        // lands or the budget ends. Whether an attempt whose answer was lost landed is told by
        // `committed_lease_id`.
        let give_up = boottime() + COMMIT_BUDGET;
        let previous = loop {
            let (name, host, reason, apply) =
                (name.clone(), host.clone(), reason.clone(), apply.clone());
            let attempt = self.db.run(move |client| {
                let mut tx = client.transaction()?;
                let fenced = match lease_id {
                    Some(lease_id) => tx.query_opt(
                        "SELECT state, alerted FROM accounts
                         WHERE id = $1 AND generation = $2 AND lease_id = $3
                         FOR UPDATE",
                        &[&id, &generation, &lease_id],
                    )?,
                    None => tx.query_opt(
                        "SELECT state, alerted FROM accounts WHERE id = $1 FOR UPDATE",
                        &[&id],
                    )?,
                };
                let Some(row) = fenced else {
                    let landed: bool = tx
                        .query_opt(
                            "SELECT committed_lease_id = $2 FROM accounts WHERE id = $1",
                            &[&id, &lease_id],
                        )?
                        .and_then(|row| row.get::<_, Option<bool>>(0))
                        .unwrap_or(false);
                    return if landed {
                        Ok(None)
                    } else {
                        Err(StoreError::Superseded(name))
                    };
                };
                let (previous, alerted): (String, bool) = (row.get(0), row.get(1));
                tx.execute(
                    "UPDATE accounts SET generation = generation + 1, committed_lease_id = lease_id,
                         lease_id = NULL, lease_holder = NULL, lease_until = NULL,
                         state = $2, last_error = $3
                     WHERE id = $1",
                    &[&id, &state.as_str(), &reason],
                )?;
                apply(&mut tx, now())?;
                if previous != state.as_str() {
                    log_event(&mut tx, &host, &name, state.as_str(), reason.as_deref())?;
                }
                let changed = previous != state.as_str();
                outbox::on_change(
                    &mut tx,
                    id,
                    &name,
                    (state, changed),
                    reason.as_deref(),
                    alerted,
                )?;
                tx.commit()?;
                Ok(Some(previous))
            });
            match attempt {
                // A certificate not trusted may be a failover's passing state, and trying again
                // costs nothing (no statement ran): the commit carries the only copy of a
                // rotated token.
                Err(StoreError::DatabaseLost(_) | StoreError::UntrustedCertificate(_))
                    if boottime() < give_up =>
                {
                    std::thread::sleep(COMMIT_RETRY);
                }
                other => break other?,
            }
        };
        // An earlier attempt landed: its transaction recorded the change of state.
        let Some(previous) = previous else {
            return Ok(None);
        };
        let from = AccountState::parse(&previous).ok_or_else(|| {
            StoreError::BadConfig(account.name.clone(), format!("unknown state {previous:?}"))
        })?;
        Ok((from != state).then(|| Transition {
            account: account.name.clone(),
            from,
            to: state,
            reason: stated,
        }))
    }
}

/// A new account's row, sealed and signed, ready to write.
struct NewRow {
    id: i64,
    name: String,
    config: String,
    tag: Vec<u8>,
    kind: &'static str,
    sealed: Vec<Sealed>,
    schedule: Option<String>,
    refresh_before: Option<i64>,
    client_secret_expires_at: Option<i64>,
    key_created_at: Option<i64>,
    rotate_every: Option<i64>,
    access_expires_at: Option<i64>,
    refresh_expires_at: Option<i64>,
    /// The first token was a proof (not an imported one).
    validated: bool,
}

impl NewRow {
    fn insert(&self, tx: &mut postgres::Transaction<'_>, at: i64) -> Result<(), StoreError> {
        let inserted = tx.execute(
            "INSERT INTO accounts (id, name, config, config_mac, state, created_at,
                 validation_schedule, refresh_before, client_secret_expires_at, key_created_at,
                 rotate_every, access_expires_at, refresh_expires_at, last_refresh_at,
                 last_validated_at)
             VALUES ($1, $2, $3, $4, $5, $6::bigint, $7, $8, $9, $10, $11, $12, $13,
                 $6::bigint, CASE WHEN $14::boolean THEN $6::bigint END)
             ON CONFLICT (name) DO NOTHING",
            &[
                &self.id,
                &self.name,
                &self.config,
                &self.tag,
                &AccountState::Active.as_str(),
                &at,
                &self.schedule,
                &self.refresh_before,
                &self.client_secret_expires_at,
                &self.key_created_at,
                &self.rotate_every,
                &self.access_expires_at,
                &self.refresh_expires_at,
                &self.validated,
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::AccountExists(self.name.clone()));
        }
        Sealed::put_all(&self.sealed, tx, at)?;
        Ok(())
    }
}

/// A secret sealed for its row, ready to write.
struct Sealed {
    account_id: i64,
    kind: SecretKind,
    blob: Vec<u8>,
    version: i64,
}

impl Sealed {
    fn put(&self, tx: &mut postgres::Transaction<'_>, at: i64) -> Result<(), StoreError> {
        Self::put_all(std::slice::from_ref(self), tx, at)
    }

    /// Writes `all`, after one check (not one per secret) that the fleet is still on the key
    /// they were sealed with.
    fn put_all(
        all: &[Sealed],
        tx: &mut postgres::Transaction<'_>,
        at: i64,
    ) -> Result<(), StoreError> {
        let mut versions: Vec<i64> = all.iter().map(|sealed| sealed.version).collect();
        versions.dedup();
        for version in versions {
            still_key_version(tx, version)?;
        }
        for sealed in all {
            sealed.write(tx, at)?;
        }
        Ok(())
    }

    fn write(&self, tx: &mut postgres::Transaction<'_>, at: i64) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO secrets (account_id, kind, key_version, sealed, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (account_id, kind) DO UPDATE SET
                 key_version = excluded.key_version, sealed = excluded.sealed,
                 updated_at = excluded.updated_at",
            &[
                &self.account_id,
                &self.kind.as_str(),
                &self.version,
                &self.blob,
                &at,
            ],
        )?;
        Ok(())
    }
}

/// Refuses a write made with data key `version` once the fleet moved on to another (a rekey
/// committed meanwhile), and keeps the version from moving until the transaction ends.
fn still_key_version(tx: &mut postgres::Transaction<'_>, version: i64) -> Result<(), StoreError> {
    let current: String = tx
        .query_one(
            "SELECT value FROM fleet_meta WHERE key = 'key_version' FOR SHARE",
            &[],
        )?
        .get(0);
    if current != version.to_string() {
        return Err(StoreError::KeyChanged);
    }
    Ok(())
}

fn log_event(
    tx: &mut postgres::Transaction<'_>,
    host: &str,
    account: &str,
    event: &str,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO events (at, host, account, event, detail) VALUES ($1, $2, $3, $4, $5)",
        &[&now(), &host, &account, &event, &detail],
    )?;
    Ok(())
}

const SELECT_ACCOUNT: &str = "SELECT id, name, config, config_mac, state, created_at,
    last_refresh_at, last_validated_at, last_error, access_expires_at, refresh_expires_at,
    client_secret_expires_at, key_created_at, rotate_every, validation_schedule, refresh_before,
    generation, EXISTS (SELECT 1 FROM secrets WHERE secrets.account_id = accounts.id
        AND secrets.kind = 'previous_client_secret') FROM accounts";

fn read_account(row: &postgres::Row, settings_key: &MacKey) -> Result<Account, StoreError> {
    let (id, name): (i64, String) = (row.get(0), row.get(1));
    let (config, state) =
        vouched_settings(settings_key, id, &name, row.get(2), row.get(3), row.get(4))?;
    Ok(Account {
        id,
        name,
        config,
        state,
        created_at: row.get(5),
        last_refresh_at: row.get(6),
        last_validated_at: row.get(7),
        last_error: row.get(8),
        access_expires_at: row.get(9),
        refresh_expires_at: row.get(10),
        client_secret_expires_at: row.get(11),
        key_created_at: row.get(12),
        rotate_every: row.get(13),
        validation_schedule: row.get(14),
        refresh_before: row
            .get::<_, Option<i64>>(15)
            .map(|seconds| seconds.max(0) as u64),
        generation: row.get(16),
        keeps_previous_client_secret: row.get(17),
    })
}

/// The fleet's id and data key version, after bringing its schema up to date.
fn fleet_meta(db: &Db) -> Result<(String, i64), StoreError> {
    db.run(|client| {
        let mut tx = client.transaction()?;
        let meta = tx.query(
            "SELECT key, value FROM fleet_meta WHERE to_regclass('fleet_meta') IS NOT NULL",
            &[],
        );
        let meta = match meta {
            Ok(rows) => rows,
            Err(err) if err.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => {
                return Err(StoreError::NotAFleet);
            }
            Err(err) => return Err(err.into()),
        };
        let value = |key: &str| {
            meta.iter()
                .find(|row| row.get::<_, &str>(0) == key)
                .map(|row| row.get::<_, String>(1))
        };
        let number = |key: &str| value(key).and_then(|text| text.parse::<i64>().ok());
        let vault_id = value("vault_id").ok_or(StoreError::NotAFleet)?;
        let (Some(version), Some(applied)) = (number("key_version"), number("schema")) else {
            return Err(StoreError::NotAFleet);
        };
        let applied = usize::try_from(applied).unwrap_or(usize::MAX);
        if applied > SCHEMA.len() {
            return Err(StoreError::Database(format!(
                "the fleet's schema ({applied}) is newer than this tokenvault's; upgrade tokenvault on this host"
            )));
        }
        if applied < SCHEMA.len() {
            // One host migrates; the others wait on the lock and find it done.
            tx.batch_execute("LOCK TABLE fleet_meta IN EXCLUSIVE MODE")?;
            let now_applied: i64 = tx
                .query_one("SELECT value::bigint FROM fleet_meta WHERE key = 'schema'", &[])?
                .get(0);
            for script in SCHEMA.iter().skip(usize::try_from(now_applied).unwrap_or(0)) {
                tx.batch_execute(script)?;
            }
            tx.execute(
                "UPDATE fleet_meta SET value = $1 WHERE key = 'schema'",
                &[&SCHEMA.len().to_string()],
            )?;
        }
        tx.commit()?;
        Ok((vault_id, version))
    })
}

/// A data key of exactly the right length, copied into zeroized memory.
fn exact_key(bytes: &[u8]) -> Result<Secret<[u8; KEY_LEN]>, StoreError> {
    if bytes.len() != KEY_LEN {
        return Err(StoreError::Database(
            "the wrapped data key has the wrong length".into(),
        ));
    }
    let mut raw = Secret::new([0u8; KEY_LEN]);
    raw.expose_mut().copy_from_slice(bytes);
    Ok(raw)
}

/// The data key's AAD when wrapped for one host: the vault, the key version and the host, so
/// a wrapped key copied to another host's row does not open.
fn host_wrap_aad(vault_id: &str, version: i64, host: &str) -> String {
    format!("{}|host={host}", wrap_aad(vault_id, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_options_tokio_postgres_lacks_are_taken_out() {
        let (url, extras) = libpq_extras(
            "postgres://vault@db.example.com/tv?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
        );
        assert_eq!(url, "postgres://vault@db.example.com/tv?application_name=x");
        assert!(extras.verify && extras.sslmode_given);
        assert_eq!(extras.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        let (pairs, extras) =
            libpq_extras("host=db user=vault sslmode=verify-ca sslrootcert=/ca.pem dbname=tv");
        assert_eq!(pairs, "host=db user=vault dbname=tv");
        assert!(extras.verify);
        let (_, extras) = libpq_extras("postgres://vault@db/tv?sslmode=disable");
        assert!(extras.sslmode_given && !extras.verify);
    }

    #[test]
    fn tls_is_required_off_this_machine_unless_disabled_explicitly() {
        let mode = |url: &str| {
            FleetDb::new(url, None, "h", None)
                .unwrap()
                .config
                .get_ssl_mode()
        };
        use postgres::config::SslMode;
        assert_eq!(mode("postgres://vault@db.example.com/tv"), SslMode::Require);
        assert_eq!(mode("postgres://vault@127.0.0.1/tv"), SslMode::Prefer);
        assert_eq!(mode("host=/run/postgresql user=vault"), SslMode::Prefer);
        assert_eq!(
            mode("postgres://vault@db.example.com/tv?sslmode=disable"),
            SslMode::Disable
        );
        assert_eq!(
            mode("postgres://vault@127.0.0.1/tv?sslmode=verify-full"),
            SslMode::Require
        );
    }

    #[test]
    fn the_shown_database_never_has_its_password() {
        let fleet = FleetDb::new("postgres://vault:hunter2@db/tv", None, "h", None).unwrap();
        assert_eq!(fleet.shown(), "vault@db/tv");
    }
}
