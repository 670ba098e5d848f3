-- tokenvault fleet schema v1 (PostgreSQL): the sealed store many hosts share (FLEET design in
-- README "Running on several hosts"). Like the SQLite schema, no column holds a secret in
-- plaintext: secrets live only in `secrets.sealed`, sealed with the data key, which is stored only
-- wrapped by each host's own master key (`host_keys`).

CREATE TABLE fleet_meta (
    key    text PRIMARY KEY,
    value  text NOT NULL
);

-- Hosts enrolled in the fleet. `key_source` says where the host keeps its master key
-- (keyring, a key file path, passphrase parameters): not secret.
CREATE TABLE hosts (
    host         text PRIMARY KEY,
    key_source   text NOT NULL,
    enrolled_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz
);

-- The data key, wrapped (AES-256-GCM) by each host's master key; AAD binds vault, version, host.
CREATE TABLE host_keys (
    host         text NOT NULL REFERENCES hosts(host) ON DELETE CASCADE,
    key_version  bigint NOT NULL,
    wrapped      bytea NOT NULL,
    PRIMARY KEY (host, key_version)
);

CREATE TABLE accounts (
    id                        bigserial PRIMARY KEY,
    name                      text NOT NULL UNIQUE,
    config                    text NOT NULL,
    config_mac                bytea,
    state                     text NOT NULL,
    created_at                bigint NOT NULL,
    last_refresh_at           bigint,
    last_validated_at         bigint,
    last_error                text,
    access_expires_at         bigint,
    refresh_expires_at        bigint,
    client_secret_expires_at  bigint,
    key_created_at            bigint,
    rotate_every              bigint,
    validation_schedule       text,
    refresh_before            bigint,
    -- +1 on every committed change of tokens or state: refreshes commit fenced on it.
    generation                bigint NOT NULL DEFAULT 0,
    -- The lease: who may call the provider for this account, until when (the database's clock).
    -- Commits are fenced on (generation, lease_id) too; `committed_lease_id` tells a holder whose
    -- connection broke during COMMIT whether its commit landed.
    lease_id                  bigint,
    lease_holder              text,
    lease_until               timestamptz,
    committed_lease_id        bigint
);

CREATE SEQUENCE lease_seq;

CREATE TABLE secrets (
    account_id   bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind         text NOT NULL,
    key_version  bigint NOT NULL,
    sealed       bytea NOT NULL,
    updated_at   bigint NOT NULL,
    PRIMARY KEY (account_id, kind)
);

CREATE TABLE events (
    id       bigserial PRIMARY KEY,
    at       bigint NOT NULL,
    host     text,
    account  text NOT NULL,
    event    text NOT NULL,
    detail   text
);
