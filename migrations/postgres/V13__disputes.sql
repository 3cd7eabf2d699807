-- Disputes of orders' payments (chargebacks, and inquiries that may become
-- one), as Stripe's `charge.dispute.*` events report them: what the
-- console lists, and what decides the credit a dispute holds back. `funds`
-- only moves forward: none (an inquiry), withdrawn (the credit is held
-- back), reinstated (won: given back).
CREATE TABLE disputes (
    dispute_id TEXT   PRIMARY KEY,
    order_id   BIGINT NOT NULL REFERENCES orders (id),
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    charge_id  TEXT   NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount >= 0),
    reason     TEXT   NOT NULL,
    status     TEXT   NOT NULL CHECK (status IN ('warning_needs_response', 'warning_under_review',
                      'warning_closed', 'needs_response', 'under_review', 'won', 'lost', 'prevented')),
    funds      TEXT   NOT NULL CHECK (funds IN ('none', 'withdrawn', 'reinstated')),
    respond_by BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX disputes_order ON disputes (order_id);

-- Refunds Stripe reports failed (or canceled) after they were made: the
-- credit taken back for them comes back, once per refund.
CREATE TABLE failed_refunds (
    refund_id TEXT   PRIMARY KEY,
    order_id  BIGINT NOT NULL REFERENCES orders (id),
    amount    BIGINT NOT NULL CHECK (amount >= 0),
    failed_at BIGINT NOT NULL
);
CREATE INDEX failed_refunds_order ON failed_refunds (order_id);
