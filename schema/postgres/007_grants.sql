-- tokenvault fleet schema v7: who besides a host's vault owner may fetch an account's access
-- tokens. Uids and gids differ between hosts, so a fleet grants by *name*, resolved on each host
-- by its own /etc/passwd and /etc/group. `host` = '' applies on every enrolled host; a host name
-- narrows the grant to that host. `mac` (HMAC-SHA256 keyed from the data key, over the account
-- id and the other columns) keeps a database writer from adding a grant: rows that fail it grant
-- nothing.
CREATE TABLE grants (
    account_id  bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('uid', 'gid')),
    name        text NOT NULL,
    host        text NOT NULL DEFAULT '',
    mac         bytea NOT NULL,
    PRIMARY KEY (account_id, kind, name, host)
);
