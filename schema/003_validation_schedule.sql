-- tokenvault schema v3: a per-account validation schedule (cron) overriding config.toml's.
ALTER TABLE accounts ADD COLUMN validation_schedule TEXT;
