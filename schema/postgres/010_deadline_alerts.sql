-- tokenvault fleet schema v10: deadline alerts (a refresh token's announced end, a client
-- secret's recorded expiry) once per fleet. The host that inserts an account's (deadline, date)
-- row here first writes the alert into the outbox in the same transaction; every other host's
-- insert finds the row and writes nothing.
CREATE TABLE deadline_alerts (
    account_id  bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    deadline    text NOT NULL,
    at          bigint NOT NULL,
    PRIMARY KEY (account_id, deadline, at)
);
