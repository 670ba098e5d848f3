//! A throwaway PostgreSQL cluster for the fleet tests: `initdb` into a temporary directory (as
//! the `postgres` user when the tests run as root, which initdb refuses), `postgres` on a free
//! loopback port, stopped at the end. Each test gets its own cluster.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    pub root: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    /// Extra server settings (TLS, statement counting).
    settings: String,
}

/// The newest installed PostgreSQL's programs.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (.ci/run installs it)")
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb under /usr/lib/postgresql")
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl Postgres {
    pub fn start() -> Postgres {
        let postgres = Postgres::init();
        postgres.start_server();
        postgres
    }

    /// A cluster that counts the statements it runs (pg_stat_statements), for the benchmark.
    #[allow(dead_code)] // the tests do not count
    pub fn start_counting_statements() -> Postgres {
        let mut postgres = Postgres::init();
        postgres.settings = " -c shared_preload_libraries=pg_stat_statements".to_owned();
        postgres.start_server();
        postgres
            .client()
            .batch_execute("CREATE EXTENSION pg_stat_statements")
            .unwrap();
        postgres
    }

    /// A cluster whose TCP connections must give `password` (SCRAM) for user `vault`; its own
    /// Unix socket (the tests' `client`) still needs none.
    #[allow(dead_code)] // the bench needs no password
    pub fn start_with_password(password: &str) -> Postgres {
        let postgres = Postgres::init();
        std::fs::write(
            postgres.data().join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n",
        )
        .unwrap();
        postgres.own_files();
        postgres.start_server();
        postgres
            .client()
            .execute(&format!("ALTER ROLE vault PASSWORD '{password}'"), &[])
            .unwrap();
        postgres
    }

    /// A cluster that takes TCP connections over TLS only, its certificate for `localhost`
    /// issued by a test CA; returns the CA's PEM file too.
    pub fn start_tls() -> (Postgres, PathBuf) {
        let mut postgres = Postgres::init();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let root = postgres.root.path().to_owned();
        let ca_file = root.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let (cert, key) = (root.join("server.crt"), root.join("server.key"));
        std::fs::write(&cert, server.pem()).unwrap();
        std::fs::write(&key, server_key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::write(
            postgres.data().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
        postgres.own_files();
        postgres.settings = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        );
        postgres.start_server();
        (postgres, ca_file)
    }

    /// Another CA's certificate, which the test server's certificate does not chain to.
    pub fn unrelated_ca(&self) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let other = params.self_signed(&key).unwrap();
        let path = self.root.path().join("other-ca.pem");
        std::fs::write(&path, other.pem()).unwrap();
        path
    }

    fn own_files(&self) {
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(self.root.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    fn init() -> Postgres {
        let bin = bin_dir();
        let root = tempfile::tempdir().unwrap();
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(root.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let postgres = Postgres {
            root,
            port,
            bin,
            settings: String::new(),
        };
        postgres.as_owner(
            "initdb",
            &[
                "-D",
                &postgres.data().display().to_string(),
                "-A",
                "trust",
                "-U",
                "vault",
                "--no-sync",
            ],
        );
        postgres
    }

    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// `postgres://vault@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://vault@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown); `start_server` brings it back on the same port.
    pub fn stop_server(&self) {
        let data = self.data().display().to_string();
        self.as_owner("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    /// A crash and recovery: immediate shutdown (no checkpoint, connections cut), then start.
    pub fn restart_immediately(&self) {
        let data = self.data().display().to_string();
        self.as_owner("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        self.start_server();
    }

    pub fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{}",
            self.port,
            self.root.path().display(),
            self.settings
        );
        let log = self.root.path().join("server.log");
        self.as_owner(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-o",
                &options,
                "-l",
                &log.display().to_string(),
                "-w",
                "start",
            ],
        );
    }

    /// Runs `command` (a `vault rekey`) while a host that does not exist holds every account's
    /// lease, and kills it once `begun` holds and it had a moment more: a rekey stopped after it
    /// made its new master key and before its commit. The leases are released afterwards.
    pub fn kill_while_waiting_for_leases(&self, mut command: Command, begun: impl Fn() -> bool) {
        let mut db = self.client();
        db.execute(
            "UPDATE accounts SET lease_id = nextval('lease_seq'), lease_holder = 'host-z',
                 lease_until = clock_timestamp() + interval '10 minutes'",
            &[],
        )
        .unwrap();
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = command.spawn().unwrap();
        // (This file is shared with the bench, which has no `support::eventually`.)
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !begun() {
            assert!(
                std::time::Instant::now() < give_up,
                "the rekey did not begin"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        child.kill().unwrap();
        child.wait().unwrap();
        db.execute(
            "UPDATE accounts SET lease_id = NULL, lease_holder = NULL, lease_until = NULL",
            &[],
        )
        .unwrap();
    }

    /// A superuser connection over the cluster's Unix socket: what an attacker with write access
    /// to the database has.
    pub fn client(&self) -> postgres::Client {
        let socket = format!(
            "host={} port={} user=vault dbname=postgres",
            self.root.path().display(),
            self.port
        );
        postgres::Client::connect(&socket, postgres::NoTls).unwrap()
    }

    /// Forces everything written so far into the data files (for the leak scan).
    pub fn checkpoint(&self) {
        self.client().batch_execute("CHECKPOINT").unwrap();
    }

    /// Every file of the cluster's data directory, as bytes.
    pub fn data_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if let Ok(bytes) = std::fs::read(&path) {
                    out.push((path, bytes));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data(), &mut out);
        out
    }

    fn as_owner(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = if running_as_root() {
            let mut command = Command::new("setpriv");
            command
                .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                .arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let output = command.args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = std::panic::catch_unwind(|| {
            self.as_owner("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
        });
    }
}
