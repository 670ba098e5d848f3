-- tokenvault fleet schema v13: a lease taken by an UPDATE whose answer was lost (the connection
-- broke as it committed) would hold the account for a whole lease with no one refreshing. Each
-- take carries a random nonce; the process that lost the answer takes the lease again by it.
ALTER TABLE accounts ADD COLUMN lease_nonce bigint;
