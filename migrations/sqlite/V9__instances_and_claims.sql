-- Several processes (or instances) on one database: each registers itself
-- and beats a heartbeat, so that what one left half-done is taken up only
-- when it is gone; Stripe events and inbound SMS that must be handled by
-- one of them at a time are claimed under a lease.

CREATE TABLE instances (
    id           TEXT    PRIMARY KEY,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);

-- The instance that reserved an outbound message (its crash recovery is
-- that instance's, or anyone's once it is gone).
ALTER TABLE messages ADD COLUMN instance_id TEXT;

ALTER TABLE stripe_events ADD COLUMN claimed_by TEXT;
ALTER TABLE stripe_events ADD COLUMN claimed_until INTEGER;

-- claimed: being answered by claimed_by until claimed_until; answered: the
-- reply is final.
ALTER TABLE inbound_messages ADD COLUMN state TEXT NOT NULL DEFAULT 'answered'
    CHECK (state IN ('claimed', 'answered'));
ALTER TABLE inbound_messages ADD COLUMN claimed_by TEXT;
ALTER TABLE inbound_messages ADD COLUMN claimed_until INTEGER;
