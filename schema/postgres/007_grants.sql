-- tokenvault fleet schema v7: who besides a host's vault owner may fetch an account's access
-- tokens. Uids and gids differ between hosts, so a fleet grants by *name*, resolved on each host
-- by its own /etc/passwd and /etc/group. `host` = '' applies on every enrolled host; a host name
-- narrows the grant to that host.
CREATE TABLE grants (
    account_id  bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('uid', 'gid')),
    name        text NOT NULL,
    host        text NOT NULL DEFAULT '',
    PRIMARY KEY (account_id, kind, name, host)
);
