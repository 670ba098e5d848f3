-- tokenvault fleet schema v14: where a `vault rekey` on a host is putting its new master key,
-- recorded before the key exists and cleared by the rekey's commit, so that `vault doctor` can
-- name a key file a rekey killed before its commit left behind (it opens nothing).
ALTER TABLE hosts ADD COLUMN rekey_pending text;
