-- tokenvault fleet schema v12: rotating an account's own key on a fleet. One rotation at a time
-- per account, fleet-wide: the host that sets `rotation_until` (the database's clock) rotates;
-- one that dies leaves the account to others once it runs out. The new key commits under the
-- account's refresh lease, like a refresh. A failed rotation's alert is recorded once per due
-- date in deadline_alerts (deadline = the alert's event, at = the due date, 0 when unfinished).
ALTER TABLE accounts
    ADD COLUMN rotation_id    bigint,
    ADD COLUMN rotation_until timestamptz;
