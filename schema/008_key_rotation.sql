-- Rotating an account's own long-lived key (a Google service-account key, a Microsoft client
-- secret) through the provider's API: when the key in use was created there (NULL: when the
-- account was added), and how often the daemon rotates it (seconds; NULL: only `vault rotate`).
ALTER TABLE accounts ADD COLUMN key_created_at INTEGER;
ALTER TABLE accounts ADD COLUMN rotate_every INTEGER;
