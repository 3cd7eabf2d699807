-- Selling through Stripe: the pricing mode, discount codes, orders, the
-- Stripe events seen, and the saved card of an account. Amounts are integer
-- micro-dollars; times are Unix milliseconds.

ALTER TABLE accounts ADD COLUMN stripe_payment_method_id TEXT;

-- One row: the current pricing mode of initial access.
CREATE TABLE pricing (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    mode       TEXT    NOT NULL CHECK (mode IN ('launch', 'rrp', 'sale')),
    sale_price INTEGER CHECK (sale_price IS NULL OR sale_price > 0),
    updated_at INTEGER NOT NULL,
    CHECK (mode <> 'sale' OR sale_price IS NOT NULL)
);
INSERT INTO pricing (id, mode, sale_price, updated_at) VALUES (1, 'launch', NULL, 0);

CREATE TABLE discount_codes (
    id               INTEGER PRIMARY KEY,
    code             TEXT    NOT NULL UNIQUE CHECK (code = upper(code) AND length(code) BETWEEN 1 AND 64),
    discount_type    TEXT    NOT NULL CHECK (discount_type IN ('percent', 'fixed')),
    -- percent: 1 to 100; fixed: micro-dollars off
    value            INTEGER NOT NULL CHECK (value > 0),
    max_uses         INTEGER CHECK (max_uses IS NULL OR max_uses > 0),
    -- uses reserved by pending checkouts plus uses by completed ones
    current_uses     INTEGER NOT NULL DEFAULT 0 CHECK (current_uses >= 0),
    active           INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    stripe_coupon_id TEXT,
    created_at       INTEGER NOT NULL,
    CHECK (max_uses IS NULL OR current_uses <= max_uses),
    CHECK (discount_type <> 'percent' OR value <= 100)
);

CREATE TABLE orders (
    id                       INTEGER PRIMARY KEY,
    account_id               INTEGER NOT NULL REFERENCES accounts (id),
    order_type               TEXT    NOT NULL CHECK (order_type IN ('initial_access', 'top_up')),
    -- what the customer pays: the expected amount while pending, what Stripe
    -- says was paid (amount_total) once completed
    amount                   INTEGER NOT NULL CHECK (amount >= 0),
    list_price               INTEGER NOT NULL CHECK (list_price >= 0),
    pricing_mode             TEXT    CHECK (pricing_mode IN ('launch', 'rrp', 'sale')),
    stripe_session_id        TEXT    UNIQUE,
    stripe_payment_intent_id TEXT    UNIQUE,
    discount_code_id         INTEGER REFERENCES discount_codes (id),
    -- set once the discount reservation has been given back
    discount_released        INTEGER NOT NULL DEFAULT 0 CHECK (discount_released IN (0, 1)),
    -- the caller's key of an off-session charge, so a retry finds its order
    charge_key               TEXT    UNIQUE,
    amount_refunded          INTEGER NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    status                   TEXT    NOT NULL CHECK (status IN ('pending', 'completed', 'failed', 'refunded', 'expired')),
    created_at               INTEGER NOT NULL,
    completed_at             INTEGER
);
CREATE INDEX orders_account ON orders (account_id);

-- Every Stripe event seen, by id. An event that refers to state not yet
-- known is kept with its payload and applied once that state exists.
CREATE TABLE stripe_events (
    event_id     TEXT    PRIMARY KEY,
    event_type   TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    processed_at INTEGER,
    outcome      TEXT,
    payload      TEXT
);
CREATE INDEX stripe_events_waiting ON stripe_events (received_at) WHERE processed_at IS NULL;
