-- What became of each Stripe event (status), and what a waiting event waits
-- for (waiting_on, such as 'payment_intent:pi_1'), so that applying an event
-- wakes only the events that depend on it, and events that never apply (a
-- refund of a payment another product made) are given up after three days,
-- visibly.

ALTER TABLE stripe_events ADD COLUMN status TEXT NOT NULL DEFAULT 'received'
    CHECK (status IN ('received', 'applied', 'ignored', 'waiting', 'expired', 'failed'));
ALTER TABLE stripe_events ADD COLUMN waiting_on TEXT;

UPDATE stripe_events SET status = CASE
    WHEN processed_at IS NULL AND payload IS NOT NULL THEN 'waiting'
    WHEN processed_at IS NULL THEN 'received'
    WHEN outcome LIKE 'not an event this service acts on%'
      OR outcome LIKE 'no order for%'
      OR outcome LIKE 'a Checkout payment%'
      OR outcome LIKE 'a refund of a charge without%' THEN 'ignored'
    ELSE 'applied'
END;
UPDATE stripe_events
   SET waiting_on = 'payment_intent:' || json_extract(payload, '$.payment_intent_id')
 WHERE status = 'waiting'
   AND json_extract(payload, '$.kind') = 'charge_refunded'
   AND json_extract(payload, '$.payment_intent_id') IS NOT NULL;

DROP INDEX stripe_events_waiting;
CREATE INDEX stripe_events_waiting_on ON stripe_events (waiting_on) WHERE status = 'waiting';
CREATE INDEX stripe_events_waiting_since ON stripe_events (received_at) WHERE status = 'waiting';
CREATE INDEX stripe_events_by_status ON stripe_events (status, received_at);
