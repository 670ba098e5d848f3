-- tokenvault fleet schema v9: rekeying a fleet (a new data key) without any master key leaving
-- its host. Each host has a long-term X25519 key: the private half wrapped by its own master key
-- (AES-256-GCM), the public half tagged with an HMAC under the data key, so a database writer
-- cannot put in a key of their own. `master_version` is the data-key version the host's master
-- key was made for (it names a keyring entry), apart from the fleet's current one.
ALTER TABLE hosts
    ADD COLUMN master_version      bigint NOT NULL DEFAULT 1,
    ADD COLUMN public_key          bytea,
    ADD COLUMN public_key_mac      bytea,
    ADD COLUMN private_key_wrapped bytea;

-- A new data key sealed to a host's public key by the host that rekeyed (X25519 with a one-time
-- key, HKDF-SHA256, AES-256-GCM), tagged with the previous data key's MAC key, which only the
-- fleet's hosts had. The host takes it the next time it opens the fleet, and the row goes.
CREATE TABLE key_deliveries (
    host           text NOT NULL REFERENCES hosts(host) ON DELETE CASCADE,
    key_version    bigint NOT NULL,
    from_version   bigint NOT NULL,
    ephemeral_key  bytea NOT NULL,
    sealed         bytea NOT NULL,
    mac            bytea NOT NULL,
    PRIMARY KEY (host, key_version)
);
