-- tokenvault fleet schema v4: backoff for the whole fleet. After a passing failure (5xx, 429,
-- timeouts) no host calls the provider for the account before `pause_until` (the database's
-- clock): 50 hosts do not each hammer a provider that is down.
ALTER TABLE accounts ADD COLUMN failures integer NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN pause_until timestamptz;
