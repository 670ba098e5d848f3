-- When the newest client secret of an account expires, as the user recorded it with
-- `vault set-client-secret NAME --expires DATE`; alerted ahead of time (`client_secret_expiring`).
ALTER TABLE accounts ADD COLUMN client_secret_expires_at INTEGER;
