-- tokenvault fleet schema v11: a validation firing claimed by a host that then died is run by
-- another. A claim holds for `validation_claim_until` (the database's clock); a firing still not
-- proven once it runs out (last_validated_at before the firing) is taken again by any host.
ALTER TABLE accounts ADD COLUMN validation_claim_until timestamptz;
