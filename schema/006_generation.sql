-- Every committed change of an account's tokens or state increments its generation. A refresh
-- commits only if the generation is still the one it read before calling the provider, so a
-- result that lost a race (a login committed meanwhile) never overwrites a newer one.
ALTER TABLE accounts ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
