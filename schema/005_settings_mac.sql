-- tokenvault schema v5: an HMAC (keyed from the data key) over each account's id, name and settings,
-- so an edited token URL or client id is refused before any secret is sent (src/store/mod.rs).
ALTER TABLE accounts ADD COLUMN config_mac BLOB;
