-- The background sweep that replaces orders' legacy refund records keeps
-- an order until its credit is settled with the refunds Stripe listed, not
-- only until the record is replaced: a round that replaced it and failed
-- before the refunds' rows leaves the order to a later round.
-- `settled_at` (Unix ms): when the order's credit was settled after its
-- legacy record was replaced (NULL: not yet, or still legacy). Records
-- replaced before this migration are swept once more, which settles what a
-- failure may have left and changes nothing else.
-- `sweep_left_because`: why the sweep left the order's legacy record as it
-- is, for good (no PaymentIntent to ask Stripe about; Stripe's refunds not
-- matching those recorded; the order's credit not in the ledger): it holds
-- back what it held, and a refund event about the order may still replace
-- it. NULL: the sweep may take it.
ALTER TABLE stripe_refunds ADD COLUMN settled_at INTEGER;
ALTER TABLE stripe_refunds ADD COLUMN sweep_left_because TEXT;
DROP INDEX stripe_refunds_legacy;
CREATE INDEX stripe_refunds_sweep ON stripe_refunds (order_id)
 WHERE sweep_left_because IS NULL
   AND (standing = 'legacy' OR (standing = 'replaced' AND settled_at IS NULL));
