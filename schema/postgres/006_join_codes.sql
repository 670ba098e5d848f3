-- tokenvault fleet schema v6: a join request carries an HMAC-SHA256 tag of the joining host's
-- one-time public key, keyed with the join code only the joining host's screen shows. The
-- admitting host checks it (a key swapped in the database fails) and mixes the code into the
-- transport key, so an answer not made with the code does not open. Requests from before this
-- version have no tag and cannot be admitted: run vault fleet join again.
ALTER TABLE joins ADD COLUMN request_tag bytea;
