-- tokenvault fleet schema v2: enrolling more hosts. A joining host publishes a one-time X25519
-- public key and waits; an enrolled host, once a person has compared the key's fingerprint on
-- both, admits it by sealing the data key to that key (X25519, HKDF-SHA256, AES-256-GCM). Only
-- the joining host's one-time private key, which never leaves its memory, opens it; the joining
-- host then wraps the data key with its own master key (`host_keys`) and the row goes.
CREATE TABLE joins (
    host            text PRIMARY KEY,
    public_key      bytea NOT NULL,
    requested_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    admitted_by     text,
    admitter_key    bytea,
    key_version     bigint,
    sealed_data_key bytea
);
