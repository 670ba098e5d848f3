-- tokenvault schema v4: a per-account refresh-ahead margin (seconds) overriding config.toml's.
ALTER TABLE accounts ADD COLUMN refresh_before INTEGER;
