-- Auto top-up: the saved card as a customer recognises it, each account's
-- setting (off until turned on, with the consent it was turned on with),
-- and every attempt. At most one attempt per account is in flight
-- (pending, charging or processing): a partial unique index says so, so no
-- race between threads or instances can start a second one.

ALTER TABLE accounts ADD COLUMN card_brand TEXT;
ALTER TABLE accounts ADD COLUMN card_last4 TEXT;
ALTER TABLE accounts ADD COLUMN card_exp_month INTEGER;
ALTER TABLE accounts ADD COLUMN card_exp_year INTEGER;
-- The last card Stripe said is gone: never saved again from an old event.
ALTER TABLE accounts ADD COLUMN forgotten_payment_method_id TEXT;

-- Orders gain their own type for auto top-ups.
CREATE TABLE orders_new (
    id                       INTEGER PRIMARY KEY,
    account_id               INTEGER NOT NULL REFERENCES accounts (id),
    order_type               TEXT    NOT NULL CHECK (order_type IN ('initial_access', 'top_up', 'auto_top_up')),
    amount                   INTEGER NOT NULL CHECK (amount >= 0),
    list_price               INTEGER NOT NULL CHECK (list_price >= 0),
    pricing_mode             TEXT    CHECK (pricing_mode IN ('launch', 'rrp', 'sale')),
    stripe_session_id        TEXT    UNIQUE,
    stripe_payment_intent_id TEXT    UNIQUE,
    discount_code_id         INTEGER REFERENCES discount_codes (id),
    discount_released        INTEGER NOT NULL DEFAULT 0 CHECK (discount_released IN (0, 1)),
    charge_key               TEXT    UNIQUE,
    amount_refunded          INTEGER NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    status                   TEXT    NOT NULL CHECK (status IN ('pending', 'completed', 'failed', 'refunded', 'expired')),
    created_at               INTEGER NOT NULL,
    completed_at             INTEGER
);
INSERT INTO orders_new SELECT id, account_id, order_type, amount, list_price, pricing_mode,
    stripe_session_id, stripe_payment_intent_id, discount_code_id, discount_released, charge_key,
    amount_refunded, status, created_at, completed_at FROM orders;
DROP TABLE orders;
ALTER TABLE orders_new RENAME TO orders;
CREATE INDEX orders_account ON orders (account_id);

CREATE TABLE auto_top_up_settings (
    account_id           INTEGER PRIMARY KEY REFERENCES accounts (id),
    enabled              INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    threshold            INTEGER NOT NULL CHECK (threshold > 0),
    amount               INTEGER NOT NULL CHECK (amount > 0),
    monthly_cap          INTEGER NOT NULL CHECK (monthly_cap > 0),
    consent_at           INTEGER,
    consent_via          TEXT CHECK (consent_via IN ('web', 'sms', 'api', 'admin')),
    consent_text         TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    not_before           INTEGER NOT NULL DEFAULT 0,
    paused_reason        TEXT,
    updated_at           INTEGER NOT NULL
);

CREATE TABLE auto_top_ups (
    id                INTEGER PRIMARY KEY,
    account_id        INTEGER NOT NULL REFERENCES accounts (id),
    n                 INTEGER NOT NULL CHECK (n > 0),
    amount            INTEGER NOT NULL CHECK (amount > 0),
    month             TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('pending', 'charging', 'processing', 'succeeded',
                                                         'declined', 'authentication_required', 'failed')),
    reason            TEXT,
    order_id          INTEGER REFERENCES orders (id),
    payment_intent_id TEXT,
    claimed_until     INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (account_id, n)
);
CREATE UNIQUE INDEX auto_top_ups_one_in_flight ON auto_top_ups (account_id)
    WHERE status IN ('pending', 'charging', 'processing');
CREATE INDEX auto_top_ups_claimable ON auto_top_ups (claimed_until)
    WHERE status IN ('pending', 'charging');

-- Notices gain the auto top-up's messages to the customer.
CREATE TABLE notices_new (
    id              INTEGER PRIMARY KEY,
    account_id      INTEGER NOT NULL REFERENCES accounts (id),
    kind            TEXT    NOT NULL CHECK (kind IN ('low_balance_warning', 'auto_top_up')),
    dedupe_key      TEXT    NOT NULL UNIQUE,
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'unknown')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    claimed_until   INTEGER,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    twilio_sid      TEXT,
    last_error      TEXT
);
INSERT INTO notices_new SELECT id, account_id, kind, dedupe_key, payload, state, attempts,
    next_attempt_at, claimed_until, created_at, sent_at, twilio_sid, last_error FROM notices;
DROP TABLE notices;
ALTER TABLE notices_new RENAME TO notices;
CREATE INDEX notices_due ON notices (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notices_sending ON notices (claimed_until) WHERE state = 'sending';
