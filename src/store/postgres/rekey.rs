//! A new data key for the whole fleet (`vault rekey` on a fleet host), without anyone's master
//! key leaving its host.
//!
//! Every host has a long-term X25519 key: the private half wrapped by its own master key, the
//! public half in `hosts`, vouched for by a MAC under the fleet's data key (so a database writer
//! cannot swap in a key of their own). The host that rekeys takes every account's lease (no
//! refresh is in flight anywhere), re-seals every secret and re-signs every settings, grant and
//! host-key tag with the new data key, wraps the new key with its own (new) master key, and seals
//! it to each other enrolled host's public key — one transaction. The delivery is tagged with the
//! previous data key's MAC key, which only hosts that held that key can make. Each other host
//! takes its delivery the next time it opens the fleet (a running daemon within seconds): it opens
//! it with its private key, checks the tag with the key it held, and wraps the new key with its
//! own master key. A removed host gets no delivery and reads nothing sealed after the rekey.

use std::collections::HashMap;

use x25519_dalek::{PublicKey, StaticSecret};

use super::{Db, PgStore, exact_key, host_wrap_aad, log_event};
use crate::crypto::{self, KEY_LEN, Key, MacKey};
use crate::keys::{KeySource, PassphraseFile};
use crate::secret::Secret;
use crate::store::StoreError;
use crate::store::sealing::{secret_aad_text, settings_message};

/// What this host keeps of itself in `hosts`, read when it opens the fleet.
pub(super) struct HostRecord {
    pub key_source: String,
    /// The data-key version its master key was made for (names a keyring entry).
    pub master_version: i64,
    pub public_key: Option<Vec<u8>>,
    pub public_key_mac: Option<Vec<u8>>,
    pub private_key_wrapped: Option<Vec<u8>>,
    /// Where a rekey from this host that has not committed puts its new master key.
    pub rekey_pending: Option<String>,
}

impl PgStore {
    /// Gives this host a long-term key the fleet vouches for, unless it has one: hosts enrolled
    /// before fleet rekey get theirs the first time they open the fleet.
    pub(super) fn ensure_host_key(&self, record: &HostRecord) -> Result<(), StoreError> {
        let vouched = record
            .public_key
            .as_deref()
            .zip(record.public_key_mac.as_deref())
            .is_some_and(|(public, mac)| {
                self.settings_key
                    .verify(&host_key_message(&self.vault_id, &self.host, public), mac)
            });
        if vouched && record.private_key_wrapped.is_some() {
            return Ok(());
        }
        let private = crypto::random_bytes::<KEY_LEN>()?;
        let public = PublicKey::from(&StaticSecret::from(*private.expose()))
            .as_bytes()
            .to_vec();
        let wrapped = Key::from_bytes(&self.master).seal(
            private.expose(),
            host_secret_aad(&self.vault_id, &self.host).as_bytes(),
        )?;
        let mac = self
            .settings_key
            .sign(&host_key_message(&self.vault_id, &self.host, &public));
        let host = self.host.clone();
        self.db.run(move |client| {
            client.execute(
                "UPDATE hosts SET public_key = $2, public_key_mac = $3, private_key_wrapped = $4
                 WHERE host = $1",
                &[&host, &public, &mac, &wrapped],
            )?;
            Ok(())
        })
    }

    /// Where this host's master key is, as recorded at enrollment or its last rekey, and the
    /// data-key version it was made for.
    pub fn host_master(&self) -> Result<(KeySource, i64), StoreError> {
        let record = host_record(&self.db, &self.host)?;
        Ok((
            KeySource::from_record(&record.key_source)?,
            record.master_version,
        ))
    }

    /// Rekeys the fleet: a new data key, this host's master key from `new_source`, every
    /// secret re-sealed and every tag re-signed, the new key delivered to each other host.
    /// Returns the hosts it was delivered to. Nothing changes unless all of it does.
    pub fn rekey_fleet(
        &mut self,
        new_source: &KeySource,
        passphrase: PassphraseFile<'_>,
    ) -> Result<Vec<String>, StoreError> {
        let (others, unvouched) = self.host_keys()?;
        if !unvouched.is_empty() {
            return Err(StoreError::HostKeysUnvouched(unvouched.join(", ")));
        }
        let new_version = self.key_version + 1;
        // Recorded before the new key exists, so that `vault doctor` can name a key file a crash
        // left behind; the commit clears it.
        self.record_pending_rekey(new_source)?;
        let made_file = matches!(new_source, KeySource::File(path) if !path.exists());
        let new_master = new_source.load_or_create(&self.vault_id, new_version, passphrase)?;
        let new_raw = crypto::random_bytes::<KEY_LEN>()?;
        let plan = Rekey {
            vault_id: self.vault_id.clone(),
            host: self.host.clone(),
            key_source: new_source.to_record(),
            old_version: self.key_version,
            new_version,
            old_raw: self.raw_data_key.clone(),
            new_raw: new_raw.clone(),
            new_master: new_master.clone(),
            others: others.clone(),
        };
        if let Err(err) = self.commit_rekey(plan) {
            // The commit's answer may be what was lost: the new master key goes only once the
            // database says the fleet is still on the old data key.
            match self.rekeyed_to(new_version) {
                Ok(true) => {}
                Ok(false) => {
                    self.abandon_master_key(new_source, new_version, made_file);
                    return Err(err);
                }
                Err(_) => return Err(StoreError::RekeyUnconfirmed(new_source.describe())),
            }
        }
        self.master = new_master;
        self.adopt_data_key(new_version, new_raw);
        Ok(others.into_keys().collect())
    }

    /// Takes every account's lease and applies `plan` in one transaction.
    fn commit_rekey(&self, plan: Rekey) -> Result<(), StoreError> {
        let leases = self.take_every_lease()?;
        let done = {
            let leases = leases.clone();
            self.db.run(move |client| plan.apply(client, &leases))
        };
        if done.is_err() {
            self.release_leases(leases);
        }
        done
    }

    /// Whether the fleet is on data key `version` with this host's master key made for it (a
    /// rekey from here committed).
    fn rekeyed_to(&self, version: i64) -> Result<bool, StoreError> {
        let (_, fleet_version) = super::fleet_meta(&self.db)?;
        let record = host_record(&self.db, &self.host)?;
        Ok(fleet_version == version && record.master_version == version)
    }

    /// Where this host's rekey in progress puts its new master key, if one was begun and not
    /// committed (`vault doctor` looks for the key file it may have left).
    pub fn pending_rekey(&self) -> Result<Option<KeySource>, StoreError> {
        let pending = host_record(&self.db, &self.host)?.rekey_pending;
        Ok(pending.and_then(|record| KeySource::from_record(&record).ok()))
    }

    fn record_pending_rekey(&self, new_source: &KeySource) -> Result<(), StoreError> {
        let (host, record) = (self.host.clone(), new_source.to_record());
        self.db.run(move |client| {
            client.execute(
                "UPDATE hosts SET rekey_pending = $2 WHERE host = $1",
                &[&host, &record],
            )?;
            Ok(())
        })
    }

    /// Removes the master key a rekey that did not commit made (it opens nothing), and its
    /// record. Best effort: what stays, `vault doctor` names.
    fn abandon_master_key(&self, source: &KeySource, version: i64, made_file: bool) {
        let gone = match source {
            KeySource::File(path) if made_file => std::fs::remove_file(path).is_ok(),
            KeySource::Keyring => {
                crate::keys::forget_keyring_entry(&self.vault_id, version);
                true
            }
            // A key from the environment or a passphrase leaves nothing behind.
            _ => true,
        };
        if gone {
            let host = self.host.clone();
            let _ = self.db.run(move |client| {
                client.execute(
                    "UPDATE hosts SET rekey_pending = NULL WHERE host = $1",
                    &[&host],
                )?;
                Ok(())
            });
        }
    }

    /// Follows a rekey another host made since this one opened the fleet (a daemon does, when
    /// the database says everything changed, as a rekey's commit does). Returns whether the data key changed.
    pub fn follow_rekey(&mut self) -> Result<bool, StoreError> {
        let (_, version) = super::fleet_meta(&self.db)?;
        if version == self.key_version {
            return Ok(false);
        }
        // Another process of this host may have taken the delivery already.
        let (host, wanted) = (self.host.clone(), version);
        let wrapped: Option<Vec<u8>> = self.db.run(move |client| {
            Ok(client
                .query_opt(
                    "SELECT wrapped FROM host_keys WHERE host = $1 AND key_version = $2",
                    &[&host, &wanted],
                )?
                .map(|row| row.get(0)))
        })?;
        let raw = match wrapped {
            Some(wrapped) => {
                let opened = Key::from_bytes(&self.master)
                    .open(
                        &wrapped,
                        host_wrap_aad(&self.vault_id, version, &self.host).as_bytes(),
                    )
                    // This host rekeyed with a new master key: this process has the old one.
                    .map_err(|_| StoreError::RekeyedHere(self.host.clone()))?;
                exact_key(opened.expose())?
            }
            None => {
                let record = host_record(&self.db, &self.host)?;
                take_delivery(
                    &self.db,
                    &Holder {
                        vault_id: &self.vault_id,
                        host: &self.host,
                        master: &self.master,
                        record: &record,
                    },
                    self.key_version,
                    &self.raw_data_key,
                    version,
                )?
            }
        };
        self.adopt_data_key(version, raw);
        Ok(true)
    }

    /// The enrolled hosts whose long-term key the fleet does not vouch for: a rekey stops at
    /// them.
    pub fn hosts_without_vouched_keys(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.host_keys()?.1)
    }

    /// The other hosts' public keys, each checked against its tag, and the hosts whose key is
    /// not vouched for (never opened the fleet since this version, or a key swapped in the
    /// database).
    fn host_keys(&self) -> Result<(PublicKeys, Vec<String>), StoreError> {
        let me = self.host.clone();
        let rows: Vec<HostKeyRow> = self.db.run(move |client| {
            Ok(client
                .query(
                    "SELECT host, public_key, public_key_mac FROM hosts WHERE host <> $1
                     ORDER BY host",
                    &[&me],
                )?
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2)))
                .collect())
        })?;
        let mut vouched = HashMap::new();
        let mut unvouched = Vec::new();
        for (host, public, mac) in rows {
            let key = public
                .zip(mac)
                .filter(|(public, mac)| {
                    self.settings_key
                        .verify(&host_key_message(&self.vault_id, &host, public), mac)
                })
                .and_then(|(public, _)| <[u8; 32]>::try_from(public).ok());
            match key {
                Some(key) => {
                    vouched.insert(host, key);
                }
                None => unvouched.push(host),
            }
        }
        Ok((vouched, unvouched))
    }

    /// Takes the lease of every account, waiting (up to a lease's length) for refreshes in
    /// flight elsewhere to end. Returns account id → lease id.
    fn take_every_lease(&self) -> Result<HashMap<i64, i64>, StoreError> {
        let give_up = super::boottime() + super::LEASE;
        let mut taken = HashMap::new();
        loop {
            let (host, seconds) = (self.host.clone(), super::LEASE.as_secs_f64());
            let mine: Vec<i64> = taken.values().copied().collect();
            let (newly, remaining): (Vec<(i64, i64)>, i64) = self.db.run(move |client| {
                let newly = client
                    .query(
                        "UPDATE accounts SET lease_id = nextval('lease_seq'), lease_holder = $1,
                             lease_until = clock_timestamp() + make_interval(secs => $2)
                         WHERE lease_until IS NULL OR lease_until < clock_timestamp()
                         RETURNING id, lease_id",
                        &[&host, &seconds],
                    )?
                    .iter()
                    .map(|row| (row.get(0), row.get(1)))
                    .collect::<Vec<_>>();
                let taken_now: Vec<i64> = newly.iter().map(|(_, lease)| *lease).collect();
                let remaining = client
                    .query_one(
                        "SELECT count(*) FROM accounts WHERE lease_until >= clock_timestamp()
                             AND NOT (lease_id = ANY($1) OR lease_id = ANY($2))",
                        &[&mine, &taken_now],
                    )?
                    .get(0);
                Ok((newly, remaining))
            })?;
            taken.extend(newly);
            if remaining == 0 {
                return Ok(taken);
            }
            if super::boottime() > give_up {
                self.release_leases(taken);
                return Err(StoreError::LeaseHeld("every account".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn release_leases(&self, leases: HashMap<i64, i64>) {
        let lease_ids: Vec<i64> = leases.into_values().collect();
        let _ = self.db.run(move |client| {
            client.execute(
                "UPDATE accounts SET lease_id = NULL, lease_holder = NULL, lease_until = NULL
                 WHERE lease_id = ANY($1)",
                &[&lease_ids],
            )?;
            Ok(())
        });
    }
}

/// Hosts and their vouched public keys.
type PublicKeys = HashMap<String, [u8; 32]>;

/// A host, its public key and the key's tag, as `hosts` has them.
type HostKeyRow = (String, Option<Vec<u8>>, Option<Vec<u8>>);

/// Everything the rekey transaction needs, moved to the database thread.
struct Rekey {
    vault_id: String,
    host: String,
    key_source: String,
    old_version: i64,
    new_version: i64,
    old_raw: Secret<[u8; KEY_LEN]>,
    new_raw: Secret<[u8; KEY_LEN]>,
    new_master: Secret<[u8; KEY_LEN]>,
    /// The other hosts and their vouched public keys.
    others: PublicKeys,
}

impl Rekey {
    fn apply(
        self,
        client: &mut postgres::Client,
        leases: &HashMap<i64, i64>,
    ) -> Result<(), StoreError> {
        let (old_key, new_key) = (
            Key::from_bytes(&self.old_raw),
            Key::from_bytes(&self.new_raw),
        );
        let (old_mac, new_mac) = (MacKey::derive(&self.old_raw), MacKey::derive(&self.new_raw));
        let mut tx = client.transaction()?;
        // First, so that a secret written concurrently under the old key waits, then is re-sealed
        // here — or fails its own version check if it comes after.
        let moved = tx.execute(
            "UPDATE fleet_meta SET value = $2 WHERE key = 'key_version' AND value = $1",
            &[&self.old_version.to_string(), &self.new_version.to_string()],
        )?;
        if moved != 1 {
            return Err(StoreError::KeyChanged);
        }
        let lease_ids: Vec<i64> = leases.values().copied().collect();
        let held: i64 = tx
            .query_one(
                "SELECT count(*) FROM accounts WHERE lease_until >= clock_timestamp()
                     AND NOT (lease_id = ANY($1))",
                &[&lease_ids],
            )?
            .get(0);
        if held > 0 {
            return Err(StoreError::LeaseHeld("every account".into()));
        }
        self.resign_settings(&mut tx, &old_mac, &new_mac)?;
        self.reseal_secrets(&mut tx, &old_key, &new_key)?;
        self.resign_grants(&mut tx, &old_mac, &new_mac)?;
        self.deliver(&mut tx, &old_mac, &new_mac)?;
        tx.execute(
            "UPDATE accounts SET generation = generation + 1, lease_id = NULL,
                 lease_holder = NULL, lease_until = NULL",
            &[],
        )?;
        log_event(
            &mut tx,
            &self.host,
            "",
            "rekeyed",
            Some(&format!("key={}", self.new_version)),
        )?;
        // Everything changed: running daemons look at the whole fleet, and follow the rekey.
        tx.execute("SELECT pg_notify('tokenvault', 'data')", &[])?;
        tx.commit()?;
        Ok(())
    }

    fn resign_settings(
        &self,
        tx: &mut postgres::Transaction<'_>,
        old_mac: &MacKey,
        new_mac: &MacKey,
    ) -> Result<(), StoreError> {
        let rows = tx.query(
            "SELECT id, name, config, config_mac, state FROM accounts FOR UPDATE",
            &[],
        )?;
        for row in rows {
            let (id, name, config): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
            crate::store::accounts::vouched_settings(
                old_mac,
                id,
                &name,
                &config,
                row.get(3),
                row.get(4),
            )?;
            let mac = new_mac.sign(&settings_message(id, &name, &config));
            tx.execute(
                "UPDATE accounts SET config_mac = $2 WHERE id = $1",
                &[&id, &mac],
            )?;
        }
        Ok(())
    }

    fn reseal_secrets(
        &self,
        tx: &mut postgres::Transaction<'_>,
        old_key: &Key,
        new_key: &Key,
    ) -> Result<(), StoreError> {
        let rows = tx.query(
            "SELECT account_id, kind, key_version, sealed FROM secrets",
            &[],
        )?;
        for row in rows {
            let (id, kind, version): (i64, String, i64) = (row.get(0), row.get(1), row.get(2));
            let tampered = || StoreError::SecretTampered {
                account: format!("id {id}"),
                kind: "secret",
            };
            if version != self.old_version {
                return Err(tampered());
            }
            let plain = old_key
                .open(
                    &row.get::<_, Vec<u8>>(3),
                    secret_aad_text(id, &kind, version).as_bytes(),
                )
                .map_err(|_| tampered())?;
            let sealed = new_key.seal(
                plain.expose(),
                secret_aad_text(id, &kind, self.new_version).as_bytes(),
            )?;
            tx.execute(
                "UPDATE secrets SET key_version = $3, sealed = $4
                 WHERE account_id = $1 AND kind = $2",
                &[&id, &kind, &self.new_version, &sealed],
            )?;
        }
        Ok(())
    }

    /// Grants are signed anew; a row whose tag fails granted nothing and goes.
    fn resign_grants(
        &self,
        tx: &mut postgres::Transaction<'_>,
        old_mac: &MacKey,
        new_mac: &MacKey,
    ) -> Result<(), StoreError> {
        let rows = tx.query("SELECT account_id, kind, name, host, mac FROM grants", &[])?;
        for row in rows {
            let (id, kind, name, host): (i64, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let message = super::grants::grant_message(id, &kind, &name, &host);
            let signed = old_mac
                .verify(&message, &row.get::<_, Vec<u8>>(4))
                .then(|| new_mac.sign(&message));
            tx.execute(
                "UPDATE grants SET mac = $5
                 WHERE account_id = $1 AND kind = $2 AND name = $3 AND host = $4",
                &[&id, &kind, &name, &host, &signed.unwrap_or_default()],
            )?;
        }
        tx.execute("DELETE FROM grants WHERE mac = ''", &[])?;
        Ok(())
    }

    /// This host's copy of the new key under its new master key; every other host's sealed to
    /// its public key, tagged with the old key's MAC key; every host key re-signed.
    fn deliver(
        &self,
        tx: &mut postgres::Transaction<'_>,
        old_mac: &MacKey,
        new_mac: &MacKey,
    ) -> Result<(), StoreError> {
        let wrapped = Key::from_bytes(&self.new_master).seal(
            self.new_raw.expose(),
            host_wrap_aad(&self.vault_id, self.new_version, &self.host).as_bytes(),
        )?;
        tx.execute("DELETE FROM host_keys WHERE host = $1", &[&self.host])?;
        tx.execute(
            "INSERT INTO host_keys (host, key_version, wrapped) VALUES ($1, $2, $3)",
            &[&self.host, &self.new_version, &wrapped],
        )?;
        tx.execute(
            "UPDATE hosts SET key_source = $2, master_version = $3, rekey_pending = NULL
             WHERE host = $1",
            &[&self.host, &self.key_source, &self.new_version],
        )?;
        tx.execute("DELETE FROM key_deliveries", &[])?;
        for (host, public) in &self.others {
            let delivery = Delivery::seal(
                &self.vault_id,
                host,
                self.new_version,
                public,
                &self.new_raw,
            )?;
            let mac = old_mac.sign(&delivery.message(&self.vault_id, host, self.new_version));
            tx.execute(
                "INSERT INTO key_deliveries
                     (host, key_version, from_version, ephemeral_key, sealed, mac)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    host,
                    &self.new_version,
                    &self.old_version,
                    &delivery.ephemeral_key,
                    &delivery.sealed,
                    &mac,
                ],
            )?;
        }
        let keys = tx.query(
            "SELECT host, public_key FROM hosts WHERE public_key IS NOT NULL",
            &[],
        )?;
        for row in keys {
            let (host, public): (String, Vec<u8>) = (row.get(0), row.get(1));
            // Only keys vouched for under the old key are vouched for under the new one.
            let vouched = host == self.host || self.others.contains_key(&host);
            let mac = if vouched {
                new_mac.sign(&host_key_message(&self.vault_id, &host, &public))
            } else {
                Vec::new()
            };
            tx.execute(
                "UPDATE hosts SET public_key_mac = $2 WHERE host = $1",
                &[&host, &mac],
            )?;
        }
        Ok(())
    }
}

/// A data key sealed to one host's public key: X25519 with a one-time key, HKDF-SHA256 bound to
/// the fleet, the host, the key version and both public keys, AES-256-GCM.
struct Delivery {
    ephemeral_key: Vec<u8>,
    sealed: Vec<u8>,
}

impl Delivery {
    fn seal(
        vault_id: &str,
        host: &str,
        version: i64,
        recipient: &[u8; 32],
        data_key: &Secret<[u8; KEY_LEN]>,
    ) -> Result<Delivery, StoreError> {
        let ephemeral = StaticSecret::from(*crypto::random_bytes::<32>()?.expose());
        let ephemeral_key = PublicKey::from(&ephemeral).as_bytes().to_vec();
        let shared = ephemeral.diffie_hellman(&PublicKey::from(*recipient));
        if !shared.was_contributory() {
            return Err(StoreError::HostKeysUnvouched(host.to_owned()));
        }
        let key = delivery_key(
            shared.as_bytes(),
            vault_id,
            host,
            version,
            &ephemeral_key,
            recipient,
        )?;
        let sealed = key.seal(
            data_key.expose(),
            delivery_aad(vault_id, host, version).as_bytes(),
        )?;
        Ok(Delivery {
            ephemeral_key,
            sealed,
        })
    }

    /// What the delivery's tag covers.
    fn message(&self, vault_id: &str, host: &str, version: i64) -> Vec<u8> {
        format!(
            "tokenvault fleet key delivery\0{vault_id}\0{host}\0{version}\0{}\0{}",
            crate::store::hex(&self.ephemeral_key),
            crate::store::hex(&self.sealed)
        )
        .into_bytes()
    }
}

/// What a host needs to take a delivery.
pub(super) struct Holder<'a> {
    pub vault_id: &'a str,
    pub host: &'a str,
    pub master: &'a Secret<[u8; KEY_LEN]>,
    pub record: &'a HostRecord,
}

/// Takes the data key of `version` delivered to this host: checks the tag with the key it held
/// (`held` of `held_version`), opens it with its private key, keeps it wrapped by its own master
/// key, and drops what it held before.
pub(super) fn take_delivery(
    db: &Db,
    holder: &Holder<'_>,
    held_version: i64,
    held: &Secret<[u8; KEY_LEN]>,
    version: i64,
) -> Result<Secret<[u8; KEY_LEN]>, StoreError> {
    let missed = || StoreError::NotDelivered(holder.host.to_owned());
    let host = holder.host.to_owned();
    let (from_version, ephemeral_key, sealed, mac): (i64, Vec<u8>, Vec<u8>, Vec<u8>) = db
        .run(move |client| {
            Ok(client
                .query_opt(
                    "SELECT from_version, ephemeral_key, sealed, mac FROM key_deliveries
                     WHERE host = $1 AND key_version = $2",
                    &[&host, &version],
                )?
                .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3))))
        })?
        .ok_or_else(missed)?;
    let delivery = Delivery {
        ephemeral_key,
        sealed,
    };
    let tagged = from_version == held_version
        && MacKey::derive(held).verify(
            &delivery.message(holder.vault_id, holder.host, version),
            &mac,
        );
    if !tagged {
        return Err(missed());
    }
    let wrapped_private = holder
        .record
        .private_key_wrapped
        .as_deref()
        .ok_or_else(missed)?;
    let master = Key::from_bytes(holder.master);
    let private = master
        .open(
            wrapped_private,
            host_secret_aad(holder.vault_id, holder.host).as_bytes(),
        )
        .map_err(|_| missed())?;
    let private = StaticSecret::from(*exact_key(private.expose())?.expose());
    let public = PublicKey::from(&private);
    let ephemeral =
        <[u8; 32]>::try_from(delivery.ephemeral_key.as_slice()).map_err(|_| missed())?;
    let shared = private.diffie_hellman(&PublicKey::from(ephemeral));
    let key = delivery_key(
        shared.as_bytes(),
        holder.vault_id,
        holder.host,
        version,
        &delivery.ephemeral_key,
        public.as_bytes(),
    )?;
    let opened = key
        .open(
            &delivery.sealed,
            delivery_aad(holder.vault_id, holder.host, version).as_bytes(),
        )
        .map_err(|_| missed())?;
    let raw = exact_key(opened.expose())?;
    let wrapped = master.seal(
        raw.expose(),
        host_wrap_aad(holder.vault_id, version, holder.host).as_bytes(),
    )?;
    let host = holder.host.to_owned();
    db.run(move |client| {
        let mut tx = client.transaction()?;
        tx.execute(
            "INSERT INTO host_keys (host, key_version, wrapped) VALUES ($1, $2, $3)
             ON CONFLICT (host, key_version) DO NOTHING",
            &[&host, &version, &wrapped],
        )?;
        tx.execute(
            "DELETE FROM host_keys WHERE host = $1 AND key_version < $2",
            &[&host, &version],
        )?;
        tx.execute(
            "DELETE FROM key_deliveries WHERE host = $1 AND key_version = $2",
            &[&host, &version],
        )?;
        log_event(
            &mut tx,
            &host,
            "",
            "rekey_taken",
            Some(&format!("key={version}")),
        )?;
        tx.commit()?;
        Ok(())
    })?;
    Ok(raw)
}

/// This host's row in `hosts`.
pub(super) fn host_record(db: &Db, host: &str) -> Result<HostRecord, StoreError> {
    let owner = host.to_owned();
    db.run(move |client| {
        let row = client
            .query_opt(
                "SELECT key_source, master_version, public_key, public_key_mac,
                     private_key_wrapped, rekey_pending
                 FROM hosts WHERE host = $1",
                &[&owner],
            )?
            .ok_or_else(|| StoreError::UnknownHost(owner.clone()))?;
        Ok(HostRecord {
            key_source: row.get(0),
            master_version: row.get(1),
            public_key: row.get(2),
            public_key_mac: row.get(3),
            private_key_wrapped: row.get(4),
            rekey_pending: row.get(5),
        })
    })
}

fn delivery_key(
    shared: &[u8],
    vault_id: &str,
    host: &str,
    version: i64,
    ephemeral_key: &[u8],
    recipient: &[u8],
) -> Result<Key, StoreError> {
    let info = format!(
        "tokenvault fleet key delivery|vault={vault_id}|host={host}|key={version}|ephemeral={}|recipient={}",
        crate::store::hex(ephemeral_key),
        crate::store::hex(recipient)
    );
    Ok(crypto::derive_key(
        b"tokenvault fleet key delivery",
        shared,
        &info,
    )?)
}

fn delivery_aad(vault_id: &str, host: &str, version: i64) -> String {
    format!("tokenvault fleet key delivery|vault={vault_id}|host={host}|key={version}")
}

/// The AAD of a host's private key wrapped by its master key.
fn host_secret_aad(vault_id: &str, host: &str) -> String {
    format!("tokenvault fleet host key|vault={vault_id}|host={host}")
}

/// What a host public key's tag covers.
fn host_key_message(vault_id: &str, host: &str, public: &[u8]) -> Vec<u8> {
    format!(
        "tokenvault fleet host public key\0{vault_id}\0{host}\0{}",
        crate::store::hex(public)
    )
    .into_bytes()
}
