-- Stripe's refunds of orders' payments, each recorded once by its id: what
-- an order's refunds hold back of its credit is what those that stand come
-- to (`counted`: made, pending or succeeded), never a charge's running
-- total, which Stripe may or may not lower when a refund fails. A refund
-- seen failed or canceled is `failed` for good: its money came back.
CREATE TABLE stripe_refunds (
    refund_id     TEXT    PRIMARY KEY,
    order_id      INTEGER NOT NULL REFERENCES orders (id),
    amount        INTEGER NOT NULL CHECK (amount >= 0),
    standing      TEXT    NOT NULL CHECK (standing IN ('counted', 'failed', 'legacy', 'replaced')),
    -- Stripe's word for the refund's status when its standing was decided.
    stripe_status TEXT    NOT NULL,
    -- `event`: reported by an event (or by Stripe's list asked for one);
    -- `legacy_replacement`: found when Stripe's list replaced the order's
    -- legacy record (the host was told of it before, by the running total).
    recorded_by   TEXT    NOT NULL CHECK (recorded_by IN ('event', 'legacy_replacement')),
    recorded_at   INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX stripe_refunds_order ON stripe_refunds (order_id);

-- An order refunded before refunds were recorded one by one held back
-- Stripe's running total less the refunds reported failed (never below
-- nothing): a `legacy` record of it holds back exactly that, until
-- Stripe's list of the payment's refunds replaces it (`replaced`).
INSERT INTO stripe_refunds (refund_id, order_id, amount, standing, stripe_status,
                            recorded_by, recorded_at, updated_at)
SELECT 'legacy-order-' || o.id, o.id,
       MAX(o.amount_refunded - (SELECT COALESCE(SUM(f.amount), 0) FROM failed_refunds f
                                 WHERE f.order_id = o.id), 0),
       'legacy', 'legacy', 'event', COALESCE(o.completed_at, o.created_at),
       COALESCE(o.completed_at, o.created_at)
  FROM orders o
 WHERE o.amount_refunded > 0;

-- The refunds reported failed, by their id: they hold back nothing.
INSERT INTO stripe_refunds (refund_id, order_id, amount, standing, stripe_status,
                            recorded_by, recorded_at, updated_at)
SELECT refund_id, order_id, amount, 'failed', 'failed', 'event', failed_at, failed_at
  FROM failed_refunds;
DROP TABLE failed_refunds;

-- An order's refunded figure is what its refunds that stand come to; an
-- order whose refund failed in full is no longer `refunded`.
UPDATE orders
   SET amount_refunded = (SELECT r.amount FROM stripe_refunds r
                           WHERE r.refund_id = 'legacy-order-' || orders.id),
       status = CASE WHEN status = 'refunded'
                      AND (SELECT r.amount FROM stripe_refunds r
                            WHERE r.refund_id = 'legacy-order-' || orders.id) < amount
                     THEN 'completed' ELSE status END
 WHERE amount_refunded > 0;
