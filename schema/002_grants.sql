-- tokenvault schema v2: who besides the vault's owner may fetch an account's access tokens.
CREATE TABLE grants (
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    -- 'uid' or 'gid' (the caller's primary group, as SO_PEERCRED reports it)
    kind        TEXT NOT NULL CHECK (kind IN ('uid', 'gid')),
    id          INTEGER NOT NULL,
    PRIMARY KEY (account_id, kind, id)
) STRICT;
