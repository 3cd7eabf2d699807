-- Auto top-up (as SQLite's V10): the saved card as a customer recognises
-- it, each account's setting with its consent, and every attempt; at most
-- one attempt per account in flight, by a partial unique index.

ALTER TABLE accounts ADD COLUMN card_brand TEXT;
ALTER TABLE accounts ADD COLUMN card_last4 TEXT;
ALTER TABLE accounts ADD COLUMN card_exp_month BIGINT;
ALTER TABLE accounts ADD COLUMN card_exp_year BIGINT;
-- The last card Stripe said is gone: never saved again from an old event.
ALTER TABLE accounts ADD COLUMN forgotten_payment_method_id TEXT;

ALTER TABLE orders DROP CONSTRAINT orders_order_type_check;
ALTER TABLE orders ADD CONSTRAINT orders_order_type_check
    CHECK (order_type IN ('initial_access', 'top_up', 'auto_top_up'));

ALTER TABLE notices DROP CONSTRAINT notices_kind_check;
ALTER TABLE notices ADD CONSTRAINT notices_kind_check
    CHECK (kind IN ('low_balance_warning', 'auto_top_up'));

CREATE TABLE auto_top_up_settings (
    account_id           BIGINT PRIMARY KEY REFERENCES accounts (id),
    enabled              BIGINT NOT NULL CHECK (enabled IN (0, 1)),
    threshold            BIGINT NOT NULL CHECK (threshold > 0),
    amount               BIGINT NOT NULL CHECK (amount > 0),
    monthly_cap          BIGINT NOT NULL CHECK (monthly_cap > 0),
    consent_at           BIGINT,
    consent_via          TEXT CHECK (consent_via IN ('web', 'sms', 'api', 'admin')),
    consent_text         TEXT,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    not_before           BIGINT NOT NULL DEFAULT 0,
    paused_reason        TEXT,
    updated_at           BIGINT NOT NULL
);

CREATE TABLE auto_top_ups (
    id                BIGSERIAL PRIMARY KEY,
    account_id        BIGINT NOT NULL REFERENCES accounts (id),
    n                 BIGINT NOT NULL CHECK (n > 0),
    amount            BIGINT NOT NULL CHECK (amount > 0),
    month             TEXT   NOT NULL,
    status            TEXT   NOT NULL CHECK (status IN ('pending', 'charging', 'processing', 'succeeded',
                                                        'declined', 'authentication_required', 'failed')),
    reason            TEXT,
    order_id          BIGINT REFERENCES orders (id),
    payment_intent_id TEXT,
    claimed_until     BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (account_id, n)
);
CREATE UNIQUE INDEX auto_top_ups_one_in_flight ON auto_top_ups (account_id)
    WHERE status IN ('pending', 'charging', 'processing');
CREATE INDEX auto_top_ups_claimable ON auto_top_ups (claimed_until)
    WHERE status IN ('pending', 'charging');
