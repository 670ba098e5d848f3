-- tokenvault fleet schema v3: validation once per fleet. Every daemon computes the same firing
-- time for an account (its schedule and name); the one that records that firing here first
-- validates, the others see it taken.
ALTER TABLE accounts ADD COLUMN validated_firing bigint;
