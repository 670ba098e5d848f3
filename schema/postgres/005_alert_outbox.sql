-- tokenvault fleet schema v5: alerts once per fleet. An alert row is written in the same
-- transaction as the change of state that calls for it (however many hosts raced, one commit
-- wins), and any daemon delivers it: it claims the row for a while (FOR UPDATE SKIP LOCKED),
-- hands it to its alert sinks and marks it delivered; a claim whose host died runs out and
-- another host delivers it. The id goes into the webhook body and `webhook-id`.
ALTER TABLE accounts ADD COLUMN alerted boolean NOT NULL DEFAULT false;
ALTER TABLE accounts ADD COLUMN degraded_since bigint;

CREATE TABLE alerts (
    id            bigserial PRIMARY KEY,
    at            bigint NOT NULL,
    account       text NOT NULL,
    event         text NOT NULL,
    reason        text NOT NULL,
    claimed_by    text,
    claim_until   timestamptz,
    delivered_at  timestamptz
);
CREATE INDEX alerts_undelivered ON alerts (id) WHERE delivered_at IS NULL;
