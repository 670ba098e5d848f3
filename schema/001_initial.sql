-- tokenvault schema v1. Applied at open when PRAGMA user_version < 1.
-- No column of any table holds a secret in plaintext: secrets live only in `secrets.sealed`.

-- Vault-wide settings: vault_id, key_source, key_version, wrapped_data_key (sealed by the master key).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value ANY NOT NULL
) STRICT;

CREATE TABLE accounts (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    name                TEXT NOT NULL UNIQUE,
    -- Non-secret settings as JSON: grant kind, endpoints, client id, scopes, client auth method.
    config              TEXT NOT NULL,
    -- One of: active, degraded, reauth_required, client_error (see src/account.rs).
    state               TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    last_refresh_at     INTEGER,
    last_validated_at   INTEGER,
    last_error          TEXT,
    access_expires_at   INTEGER,
    refresh_expires_at  INTEGER
) STRICT;

-- AES-256-GCM blobs (nonce || ciphertext || tag); the AAD binds account_id, kind and key_version.
CREATE TABLE secrets (
    account_id   INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    key_version  INTEGER NOT NULL,
    sealed       BLOB NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (account_id, kind)
) STRICT;

-- Audit trail of state changes; never a secret value.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    account     TEXT NOT NULL,
    event       TEXT NOT NULL,
    detail      TEXT
) STRICT;
