-- Refunds the admin asked Stripe for, one per (order, n): n is the refund's
-- number on its order, and Stripe's Idempotency-Key is made from the order
-- and n, so a repeated request (same idempotency_key) refunds once. The
-- credit comes off when Stripe's charge.refunded event arrives, as for a
-- refund made in Stripe's dashboard.
-- requested: asked (or Stripe did not answer: asking again is safe);
-- succeeded: Stripe made it; failed: Stripe refused it.
CREATE TABLE order_refunds (
    id               BIGSERIAL PRIMARY KEY,
    order_id         BIGINT  NOT NULL REFERENCES orders (id),
    n                BIGINT  NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    amount           BIGINT  NOT NULL CHECK (amount > 0),
    reason           TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('requested', 'succeeded', 'failed')),
    stripe_refund_id TEXT,
    error            TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    UNIQUE (order_id, n),
    UNIQUE (order_id, idempotency_key)
);

-- The console's charts read the last 30 days of payments, refunds and
-- messages by hour, and a month's messages by country.
CREATE INDEX orders_completed ON orders (completed_at) WHERE completed_at IS NOT NULL;
CREATE INDEX transactions_refunds ON transactions (created_at) WHERE type = 'refund';
CREATE INDEX messages_created ON messages (created_at);
