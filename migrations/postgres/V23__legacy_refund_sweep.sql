-- Orders refunded before refunds were recorded one by one hold a `legacy`
-- record until Stripe's list of the payment's refunds replaces it. Besides
-- the next refund event about the order, a background sweep asks Stripe for
-- that list, a few orders at a time; each legacy record it takes is claimed
-- until `claimed_until` (Unix ms), so that two instances do not ask for the
-- same order at once, and one that stopped half-way leaves it to the next.
ALTER TABLE stripe_refunds ADD COLUMN claimed_until BIGINT;
CREATE INDEX stripe_refunds_legacy ON stripe_refunds (order_id) WHERE standing = 'legacy';
