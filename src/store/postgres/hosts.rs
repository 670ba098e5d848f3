//! Enrolling hosts in a fleet. Each host keeps the data key wrapped by its own master key, so no
//! shared key file is copied from host to host, and one host can be removed.
//!
//! The database is not trusted to carry the admission honestly, so a person carries one secret
//! across: the joining host shows a one-time *join code* (128 random bits, never written
//! anywhere) and publishes a one-time X25519 public key tagged with it (HMAC-SHA256). The person
//! types the code into `vault fleet admit` on an enrolled host, which checks the tag — a key swapped
//! in the database fails it — and seals the data key with a key derived from the X25519 agreement
//! *and* the code (HKDF-SHA256, AES-256-GCM). A database writer who answers in the admitter's
//! place knows no code, so the joining host cannot open their answer and stores nothing. Only the
//! joining host's one-time private key — in its memory only — opens a genuine admission; it then
//! wraps the data key with its own master key, and the request row goes. (Without a PAKE in ring,
//! the code must be long: a short one could be guessed offline from the published tag.)

use std::path::Path;
use std::time::{Duration, Instant};

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::{Db, FleetDb, PgStore, exact_key, fleet_meta, host_wrap_aad, log_event};
use crate::crypto::{self, Key};
use crate::keys::{KeySource, PassphraseFile};
use crate::secret::{Secret, SecretString};
use crate::store::StoreError;

/// How many random bytes a join code carries.
const JOIN_CODE_LEN: usize = 16;

/// The one-time secret a person carries from the joining host to the admitting one.
pub struct JoinCode(Secret<[u8; JOIN_CODE_LEN]>);

impl JoinCode {
    fn generate(rng: &SystemRandom) -> Result<JoinCode, StoreError> {
        let mut raw = Secret::new([0u8; JOIN_CODE_LEN]);
        rng.fill(raw.expose_mut()).map_err(crypto_failed)?;
        Ok(JoinCode(raw))
    }

    /// The code as people read and type it: hexadecimal in dash-separated groups of four.
    pub fn shown(&self) -> SecretString {
        let groups: Vec<String> = self.0.expose().chunks(2).map(crate::store::hex).collect();
        SecretString::from(groups.join("-"))
    }

    /// Reads a typed code; spaces, dashes and letter case do not matter.
    pub fn parse(typed: &SecretString) -> Option<JoinCode> {
        let digits: SecretString = typed
            .expose()
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect::<String>()
            .into();
        let digits = digits.expose().as_bytes();
        if digits.len() != 2 * JOIN_CODE_LEN {
            return None;
        }
        let mut raw = Secret::new([0u8; JOIN_CODE_LEN]);
        for (byte, pair) in raw.expose_mut().iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(JoinCode(raw))
    }

    /// The tag a joining host publishes with its key: only someone with the code makes it.
    fn tag(&self, vault_id: &str, host: &str, public: &[u8]) -> hmac::Tag {
        hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, self.0.expose()),
            request_text(vault_id, host, public).as_bytes(),
        )
    }

    fn verify(&self, vault_id: &str, host: &str, public: &[u8], tag: &[u8]) -> bool {
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, self.0.expose()),
            request_text(vault_id, host, public).as_bytes(),
            tag,
        )
        .is_ok()
    }
}

fn request_text(vault_id: &str, host: &str, public: &[u8]) -> String {
    format!(
        "tokenvault fleet join request|vault={vault_id}|host={host}|key={}",
        crate::store::hex(public)
    )
}

/// How often a joining host looks whether it was admitted.
const ADMISSION_POLL: Duration = Duration::from_millis(300);

/// What `vault fleet status` shows.
pub struct FleetStatus {
    pub database: String,
    /// Each enrolled host, and how many seconds ago its daemon last said it was alive (`None`:
    /// no daemon seen).
    pub hosts: Vec<(String, Option<f64>)>,
    /// Hosts waiting to be admitted, and for how many seconds they have.
    pub waiting: Vec<(String, f64)>,
    /// Accounts whose lease is held now: (account, holder, seconds left).
    pub leases: Vec<(String, String, f64)>,
}

impl PgStore {
    /// Joins the fleet as `fleet.host`: publishes a one-time public key, tells the join code to
    /// `announce`, waits up to `wait` for an enrolled host to admit it, then keeps the data key
    /// wrapped by this host's master key at `key_source`. An admission not made with the code
    /// opens to nothing, and nothing is stored.
    pub fn join(
        fleet: &FleetDb,
        dir: &Path,
        key_source: KeySource,
        passphrase: PassphraseFile<'_>,
        wait: Duration,
        announce: impl FnOnce(&JoinCode),
    ) -> Result<PgStore, StoreError> {
        let host = fleet.host.clone();
        crate::store::create_private_dir(dir)?;
        let db = Db::start(fleet);
        let (vault_id, version) = fleet_meta(&db)?;
        let rng = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &rng).map_err(crypto_failed)?;
        let public = private
            .compute_public_key()
            .map_err(crypto_failed)?
            .as_ref()
            .to_vec();
        let code = JoinCode::generate(&rng)?;
        let tag = code.tag(&vault_id, &host, &public);
        request_admission(&db, &host, &public, tag.as_ref())?;
        announce(&code);
        let admission = wait_for_admission(&db, &host, &public, wait)?;
        let raw = admission
            .ok_or_else(|| StoreError::JoinTimedOut(host.clone()))
            .and_then(
                |Admission {
                     admitter_key,
                     sealed,
                 }| {
                    let transport = agree(
                        private,
                        &admitter_key,
                        &transcript(&vault_id, &host, &public, &admitter_key),
                        &code,
                    )?;
                    let opened = transport
                        .open(&sealed, admission_aad(&vault_id, &host, version).as_bytes())
                        .map_err(|_| StoreError::AdmissionUnreadable(host.clone()))?;
                    exact_key(opened.expose())
                },
            );
        let raw = match raw {
            Ok(raw) => raw,
            Err(err) => {
                withdraw_request(&db, &host, &public)?;
                return Err(err);
            }
        };
        let master = key_source.load_or_create(&vault_id, version, passphrase)?;
        let wrapped = Key::from_bytes(&master).seal(
            raw.expose(),
            host_wrap_aad(&vault_id, version, &host).as_bytes(),
        )?;
        let (owner, record) = (host.clone(), key_source.to_record());
        db.run(move |client| {
            let mut tx = client.transaction()?;
            tx.execute(
                "INSERT INTO hosts (host, key_source, master_version) VALUES ($1, $2, $3)",
                &[&owner, &record, &version],
            )?;
            tx.execute(
                "INSERT INTO host_keys (host, key_version, wrapped) VALUES ($1, $2, $3)",
                &[&owner, &version, &wrapped],
            )?;
            tx.execute("DELETE FROM joins WHERE host = $1", &[&owner])?;
            log_event(&mut tx, &owner, "", "host_joined", None)?;
            tx.commit()?;
            Ok(())
        })?;
        let store = PgStore::with_data_key(db, dir, &host, vault_id, (version, raw), &master);
        store.ensure_host_key(&super::rekey::host_record(&store.db, &host)?)?;
        Ok(store)
    }

    /// Admits host `host`, which waits in `vault fleet join` showing `code`: once the key it
    /// published carries the code's tag, the data key is sealed to that key and the code.
    pub fn admit(&self, host: &str, code: &JoinCode) -> Result<(), StoreError> {
        let owner = host.to_owned();
        let (public, tag) = self
            .db
            .run(move |client| {
                Ok(client
                    .query_opt(
                        "SELECT public_key, request_tag FROM joins
                         WHERE host = $1 AND sealed_data_key IS NULL",
                        &[&owner],
                    )?
                    .map(|row| (row.get::<_, Vec<u8>>(0), row.get::<_, Option<Vec<u8>>>(1))))
            })?
            .ok_or_else(|| StoreError::NoJoinRequest(host.to_owned()))?;
        let tagged = tag.is_some_and(|tag| code.verify(&self.vault_id, host, &public, &tag));
        if !tagged {
            return Err(StoreError::JoinCodeMismatch(host.to_owned()));
        }
        let rng = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &rng).map_err(crypto_failed)?;
        let admitter_key = private
            .compute_public_key()
            .map_err(crypto_failed)?
            .as_ref()
            .to_vec();
        let transport = agree(
            private,
            &public,
            &transcript(&self.vault_id, host, &public, &admitter_key),
            code,
        )?;
        let sealed = transport.seal(
            self.raw_data_key.expose(),
            admission_aad(&self.vault_id, host, self.key_version).as_bytes(),
        )?;
        let (owner, me, version) = (host.to_owned(), self.host.clone(), self.key_version);
        let admitted = self.db.run(move |client| {
            let mut tx = client.transaction()?;
            let admitted = tx.execute(
                "UPDATE joins SET admitted_by = $3, admitter_key = $4, key_version = $5,
                     sealed_data_key = $6
                 WHERE host = $1 AND public_key = $2 AND sealed_data_key IS NULL",
                &[&owner, &public, &me, &admitter_key, &version, &sealed],
            )? == 1;
            if admitted {
                log_event(&mut tx, &me, "", "host_admitted", Some(&owner))?;
            }
            tx.commit()?;
            Ok(admitted)
        })?;
        if !admitted {
            // The request changed since its tag was checked (a new `join`).
            return Err(StoreError::JoinCodeMismatch(host.to_owned()));
        }
        Ok(())
    }

    /// Records that this host's daemon is alive (`vault fleet status` shows when it last was).
    pub fn heartbeat(&self) -> Result<(), StoreError> {
        let host = self.host.clone();
        self.db.run(move |client| {
            client.execute(
                "UPDATE hosts SET heartbeat_at = clock_timestamp() WHERE host = $1",
                &[&host],
            )?;
            Ok(())
        })
    }

    /// Removes host `host` from the fleet: its wrapped data key is deleted.
    pub fn remove_host(&self, host: &str) -> Result<(), StoreError> {
        if host == self.host {
            return Err(StoreError::RemovingSelf(host.to_owned()));
        }
        let (owner, me) = (host.to_owned(), self.host.clone());
        let removed = self.db.run(move |client| {
            let mut tx = client.transaction()?;
            let removed = tx.execute("DELETE FROM hosts WHERE host = $1", &[&owner])? == 1;
            tx.execute("DELETE FROM joins WHERE host = $1", &[&owner])?;
            if removed {
                log_event(&mut tx, &me, "", "host_removed", Some(&owner))?;
            }
            tx.commit()?;
            Ok(removed)
        })?;
        if !removed {
            return Err(StoreError::UnknownHost(host.to_owned()));
        }
        Ok(())
    }

    /// Whether a notification sent through the database reaches a listening connection within
    /// a few seconds (a pooler in transaction mode swallows them; then hosts only poll).
    pub fn notifications_arrive(&self) -> Result<bool, StoreError> {
        let wait = Duration::from_secs(5);
        let changes = self.db.listen();
        if !changes.wait_until(wait, |heard| heard.listening) {
            return Ok(false);
        }
        let before = changes.now().data;
        self.db.run(|client| {
            client.execute("SELECT pg_notify('tokenvault', 'data')", &[])?;
            Ok(())
        })?;
        Ok(changes.wait_until(wait, |heard| heard.data > before))
    }

    /// How far this host's clock is ahead of the database's, in seconds (leases run on the
    /// database's clock; validation firings and deadlines on each host's).
    pub fn clock_offset(&self) -> Result<f64, StoreError> {
        let database: f64 = self.db.run(|client| {
            Ok(client
                .query_one("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8", &[])?
                .get(0))
        })?;
        let here = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        Ok(here - database)
    }

    pub fn fleet_status(&self, database: &str) -> Result<FleetStatus, StoreError> {
        let database = database.to_owned();
        self.db.run(move |client| {
            let hosts = client
                .query(
                    "SELECT host, EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at)::float8
                     FROM hosts ORDER BY host",
                    &[],
                )?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            let waiting = client
                .query(
                    "SELECT host, EXTRACT(EPOCH FROM clock_timestamp() - requested_at)::float8
                     FROM joins WHERE sealed_data_key IS NULL ORDER BY host",
                    &[],
                )?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            let leases = client
                .query(
                    "SELECT name, COALESCE(lease_holder, ''),
                         EXTRACT(EPOCH FROM lease_until - clock_timestamp())::float8
                     FROM accounts WHERE lease_until > clock_timestamp() ORDER BY name",
                    &[],
                )?
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2)))
                .collect();
            Ok(FleetStatus {
                database,
                hosts,
                waiting,
                leases,
            })
        })
    }
}

fn request_admission(db: &Db, host: &str, public: &[u8], tag: &[u8]) -> Result<(), StoreError> {
    let (owner, key, tag) = (host.to_owned(), public.to_vec(), tag.to_vec());
    db.run(move |client| {
        let enrolled: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM hosts WHERE host = $1)",
                &[&owner],
            )?
            .get(0);
        if enrolled {
            return Err(StoreError::HostExists(owner));
        }
        client.execute(
            "INSERT INTO joins (host, public_key, request_tag) VALUES ($1, $2, $3)
             ON CONFLICT (host) DO UPDATE SET public_key = excluded.public_key,
                 request_tag = excluded.request_tag, requested_at = clock_timestamp(),
                 admitted_by = NULL, admitter_key = NULL, key_version = NULL,
                 sealed_data_key = NULL",
            &[&owner, &key, &tag],
        )?;
        Ok(())
    })
}

/// Deletes this process's own request (a later `join` may have replaced it: that one stays).
fn withdraw_request(db: &Db, host: &str, public: &[u8]) -> Result<(), StoreError> {
    let (owner, key) = (host.to_owned(), public.to_vec());
    db.run(move |client| {
        client.execute(
            "DELETE FROM joins WHERE host = $1 AND public_key = $2",
            &[&owner, &key],
        )?;
        Ok(())
    })
}

/// What an enrolled host left for a joining one.
struct Admission {
    /// The admitting host's one-time public key.
    admitter_key: Vec<u8>,
    /// The data key, sealed with the key both derive.
    sealed: Vec<u8>,
}

/// The admission of this request, once an enrolled host made it.
fn wait_for_admission(
    db: &Db,
    host: &str,
    public: &[u8],
    wait: Duration,
) -> Result<Option<Admission>, StoreError> {
    let until = Instant::now() + wait;
    loop {
        let (owner, key) = (host.to_owned(), public.to_vec());
        let admitted = db.run(move |client| {
            Ok(client
                .query_opt(
                    "SELECT admitter_key, sealed_data_key FROM joins
                     WHERE host = $1 AND public_key = $2 AND sealed_data_key IS NOT NULL",
                    &[&owner, &key],
                )?
                .map(|row| Admission {
                    admitter_key: row.get(0),
                    sealed: row.get(1),
                }))
        })?;
        if admitted.is_some() || Instant::now() >= until {
            return Ok(admitted);
        }
        std::thread::sleep(ADMISSION_POLL);
    }
}

/// The transport key both sides derive: X25519 between one side's one-time private key and the
/// other's public key, with the join code, through HKDF bound to the admission's `transcript`.
fn agree(
    private: EphemeralPrivateKey,
    peer_key: &[u8],
    transcript: &str,
    code: &JoinCode,
) -> Result<Key, StoreError> {
    agreement::agree_ephemeral(
        private,
        &UnparsedPublicKey::new(&X25519, peer_key),
        |shared| transport_key(shared, code, transcript),
    )
    .map_err(crypto_failed)?
}

/// What the transport key is bound to: the fleet, the joining host and both public keys.
fn transcript(vault_id: &str, host: &str, joiner_key: &[u8], admitter_key: &[u8]) -> String {
    format!(
        "tokenvault fleet admission|vault={vault_id}|host={host}|joiner={}|admitter={}",
        crate::store::hex(joiner_key),
        crate::store::hex(admitter_key)
    )
}

fn transport_key(shared: &[u8], code: &JoinCode, transcript: &str) -> Result<Key, StoreError> {
    let mut input = Secret::new([0u8; 32 + JOIN_CODE_LEN]);
    let (agreed, carried) = input.expose_mut().split_at_mut(32);
    agreed.copy_from_slice(
        shared
            .get(..32)
            .ok_or_else(|| crypto_failed(ring::error::Unspecified))?,
    );
    carried.copy_from_slice(code.0.expose());
    Ok(crypto::derive_key(
        b"tokenvault fleet admission",
        input.expose(),
        transcript,
    )?)
}

/// The sealed data key's AAD: the fleet, the host it is for and the key version.
fn admission_aad(vault_id: &str, host: &str, version: i64) -> String {
    format!("tokenvault fleet admission|vault={vault_id}|host={host}|key={version}")
}

fn crypto_failed(_: ring::error::Unspecified) -> StoreError {
    StoreError::Database("the host key exchange failed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_code_reads_back_as_shown_whatever_the_spacing_or_case() {
        let code = JoinCode::generate(&SystemRandom::new()).unwrap();
        let shown = code.shown();
        let typed = SecretString::from(shown.expose().replace('-', " ").to_uppercase());
        let read = JoinCode::parse(&typed).unwrap();
        assert_eq!(read.0.expose(), code.0.expose());
        for wrong in ["", "12345", &"g".repeat(32), &"a".repeat(34)] {
            assert!(JoinCode::parse(&SecretString::from(wrong.to_owned())).is_none());
        }
    }

    #[test]
    fn a_request_tag_holds_only_for_its_code_host_and_key() {
        let rng = SystemRandom::new();
        let (code, other) = (
            JoinCode::generate(&rng).unwrap(),
            JoinCode::generate(&rng).unwrap(),
        );
        let tag = code.tag("v1", "host-b", b"key");
        assert!(code.verify("v1", "host-b", b"key", tag.as_ref()));
        assert!(!other.verify("v1", "host-b", b"key", tag.as_ref()));
        assert!(!code.verify("v1", "host-c", b"key", tag.as_ref()));
        assert!(!code.verify("v1", "host-b", b"kez", tag.as_ref()));
    }
}
