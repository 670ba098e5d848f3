//! Enrolling hosts in a fleet. Each host keeps the data key wrapped by its own master key, so no
//! shared key file is copied from host to host, and one host can be removed. A joining host
//! publishes a one-time X25519 public key and waits; an enrolled host, once a person has
//! compared the key's fingerprint on both screens, seals the data key to it (X25519 agreement,
//! HKDF-SHA256, AES-256-GCM). Only the joining host's one-time private key — in its memory only —
//! opens that; it then wraps the data key with its own master key, and the request row goes.

use std::path::Path;
use std::time::{Duration, Instant};

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use ring::rand::SystemRandom;

use super::{Db, FleetDb, PgStore, exact_key, fleet_meta, host_wrap_aad, log_event};
use crate::crypto::{KEY_LEN, Key};
use crate::keys::{KeySource, PassphraseFile};
use crate::secret::Secret;
use crate::store::StoreError;

/// How often a joining host looks whether it was admitted.
const ADMISSION_POLL: Duration = Duration::from_millis(300);

/// What `vault fleet status` shows.
pub struct FleetStatus {
    pub database: String,
    /// Each enrolled host, and how many seconds ago its daemon last said it was alive (`None`:
    /// no daemon seen).
    pub hosts: Vec<(String, Option<f64>)>,
    /// Hosts waiting to be admitted, with their key's fingerprint.
    pub waiting: Vec<(String, String)>,
    /// Accounts whose lease is held now: (account, holder, seconds left).
    pub leases: Vec<(String, String, f64)>,
}

impl PgStore {
    /// Joins the fleet as `fleet.host`: publishes a one-time public key, tells its fingerprint
    /// to `announce`, waits up to `wait` for an enrolled host to admit it, then keeps the data
    /// key wrapped by this host's master key at `key_source`.
    pub fn join(
        fleet: &FleetDb,
        dir: &Path,
        key_source: KeySource,
        passphrase: PassphraseFile<'_>,
        wait: Duration,
        announce: impl FnOnce(&str),
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
        request_admission(&db, &host, &public)?;
        announce(&fingerprint(&public));
        let Some(Admission {
            admitter_key,
            sealed,
        }) = wait_for_admission(&db, &host, &public, wait)?
        else {
            let (owner, key) = (host.clone(), public.clone());
            db.run(move |client| {
                client.execute(
                    "DELETE FROM joins WHERE host = $1 AND public_key = $2",
                    &[&owner, &key],
                )?;
                Ok(())
            })?;
            return Err(StoreError::JoinTimedOut(host));
        };
        let transport = agree(
            private,
            &admitter_key,
            &transcript(&vault_id, &host, &public, &admitter_key),
        )?;
        let opened = transport
            .open(&sealed, admission_aad(&vault_id, &host, version).as_bytes())
            .map_err(|_| StoreError::AdmissionUnreadable(host.clone()))?;
        let raw = exact_key(opened.expose())?;
        let master = key_source.load_or_create(&vault_id, version, passphrase)?;
        let wrapped = Key::from_bytes(&master).seal(
            raw.expose(),
            host_wrap_aad(&vault_id, version, &host).as_bytes(),
        )?;
        let (owner, record) = (host.clone(), key_source.to_record());
        db.run(move |client| {
            let mut tx = client.transaction()?;
            tx.execute(
                "INSERT INTO hosts (host, key_source) VALUES ($1, $2)",
                &[&owner, &record],
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
        Ok(PgStore::with_data_key(
            db, dir, &host, vault_id, version, raw,
        ))
    }

    /// Admits host `host`, which waits in `vault fleet join`, once `confirm` accepts the
    /// fingerprint of the key it published: the data key is sealed to that key.
    pub fn admit(&self, host: &str, confirm: impl FnOnce(&str) -> bool) -> Result<(), StoreError> {
        let owner = host.to_owned();
        let public = self
            .db
            .run(move |client| {
                Ok(client
                    .query_opt(
                        "SELECT public_key FROM joins WHERE host = $1 AND sealed_data_key IS NULL",
                        &[&owner],
                    )?
                    .map(|row| row.get::<_, Vec<u8>>(0)))
            })?
            .ok_or_else(|| StoreError::NoJoinRequest(host.to_owned()))?;
        if !confirm(&fingerprint(&public)) {
            return Err(StoreError::FingerprintMismatch(host.to_owned()));
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
            // The request changed since its fingerprint was shown (a new `join`).
            return Err(StoreError::FingerprintMismatch(host.to_owned()));
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
                    "SELECT host, public_key FROM joins WHERE sealed_data_key IS NULL ORDER BY host",
                    &[],
                )?
                .iter()
                .map(|row| (row.get(0), fingerprint(&row.get::<_, Vec<u8>>(1))))
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

fn request_admission(db: &Db, host: &str, public: &[u8]) -> Result<(), StoreError> {
    let (owner, key) = (host.to_owned(), public.to_vec());
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
            "INSERT INTO joins (host, public_key) VALUES ($1, $2)
             ON CONFLICT (host) DO UPDATE SET public_key = excluded.public_key,
                 requested_at = clock_timestamp(), admitted_by = NULL, admitter_key = NULL,
                 key_version = NULL, sealed_data_key = NULL",
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
/// other's public key, through HKDF bound to the admission's `transcript`.
fn agree(
    private: EphemeralPrivateKey,
    peer_key: &[u8],
    transcript: &str,
) -> Result<Key, StoreError> {
    agreement::agree_ephemeral(
        private,
        &UnparsedPublicKey::new(&X25519, peer_key),
        |shared| transport_key(shared, transcript),
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

fn transport_key(shared: &[u8], transcript: &str) -> Result<Key, StoreError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"tokenvault fleet admission").extract(shared);
    let info = [transcript.as_bytes()];
    let okm = prk
        .expand(&info, hkdf::HKDF_SHA256)
        .map_err(crypto_failed)?;
    let mut raw = Secret::new([0u8; KEY_LEN]);
    okm.fill(raw.expose_mut()).map_err(crypto_failed)?;
    Ok(Key::from_bytes(&raw))
}

/// The sealed data key's AAD: the fleet, the host it is for and the key version.
fn admission_aad(vault_id: &str, host: &str, version: i64) -> String {
    format!("tokenvault fleet admission|vault={vault_id}|host={host}|key={version}")
}

/// A public key's fingerprint as people compare it: SHA-256, the first 16 bytes in groups.
pub fn fingerprint(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    digest.as_ref()[..16]
        .chunks(2)
        .map(crate::store::hex)
        .collect::<Vec<_>>()
        .join(" ")
}

fn crypto_failed(_: ring::error::Unspecified) -> StoreError {
    StoreError::Database("the host key exchange failed".into())
}
