-- The whole schema, as the SQLite migrations V1 to V9 leave it, in
-- PostgreSQL's words: signed amounts in micro-dollars (BIGINT), times in
-- Unix milliseconds (BIGINT), flags as 0/1 integers (the same values as in
-- SQLite, so that `sms-credit copy` moves rows as they are).

CREATE TABLE accounts (
    id                       BIGSERIAL PRIMARY KEY,
    phone                    TEXT   NOT NULL UNIQUE,
    email                    TEXT,
    stripe_customer_id       TEXT   UNIQUE,
    status                   TEXT   NOT NULL CHECK (status IN ('pending', 'active', 'suspended', 'closed')),
    created_at               BIGINT NOT NULL,
    stripe_payment_method_id TEXT
);

-- One row per account, written in the same transaction as the ledger rows
-- that change it: what the account actor loads on activation.
CREATE TABLE account_balances (
    account_id            BIGINT PRIMARY KEY REFERENCES accounts (id),
    balance               BIGINT NOT NULL,
    seq                   BIGINT NOT NULL,
    low_balance_warned_at BIGINT,
    updated_at            BIGINT NOT NULL
);

CREATE TABLE transactions (
    account_id      BIGINT NOT NULL REFERENCES accounts (id),
    seq             BIGINT NOT NULL CHECK (seq > 0),
    type            TEXT   NOT NULL CHECK (type IN ('credit', 'debit', 'refund', 'adjustment')),
    amount          BIGINT NOT NULL,
    balance_after   BIGINT NOT NULL,
    idempotency_key TEXT   NOT NULL,
    order_id        BIGINT,
    description     TEXT   NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (account_id, seq)
);
CREATE UNIQUE INDEX transactions_account_idempotency_key
    ON transactions (account_id, idempotency_key);

CREATE TABLE pricing (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    mode       TEXT    NOT NULL CHECK (mode IN ('launch', 'rrp', 'sale')),
    sale_price BIGINT  CHECK (sale_price IS NULL OR sale_price > 0),
    updated_at BIGINT  NOT NULL,
    CHECK (mode <> 'sale' OR sale_price IS NOT NULL)
);
INSERT INTO pricing (id, mode, sale_price, updated_at) VALUES (1, 'launch', NULL, 0);

CREATE TABLE discount_codes (
    id               BIGSERIAL PRIMARY KEY,
    code             TEXT    NOT NULL UNIQUE CHECK (code = upper(code) AND length(code) BETWEEN 1 AND 64),
    discount_type    TEXT    NOT NULL CHECK (discount_type IN ('percent', 'fixed')),
    value            BIGINT  NOT NULL CHECK (value > 0),
    max_uses         BIGINT  CHECK (max_uses IS NULL OR max_uses > 0),
    current_uses     BIGINT  NOT NULL DEFAULT 0 CHECK (current_uses >= 0),
    active           BIGINT  NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    stripe_coupon_id TEXT,
    created_at       BIGINT  NOT NULL,
    CHECK (max_uses IS NULL OR current_uses <= max_uses),
    CHECK (discount_type <> 'percent' OR value <= 100)
);

CREATE TABLE orders (
    id                       BIGSERIAL PRIMARY KEY,
    account_id               BIGINT  NOT NULL REFERENCES accounts (id),
    order_type               TEXT    NOT NULL CHECK (order_type IN ('initial_access', 'top_up')),
    amount                   BIGINT  NOT NULL CHECK (amount >= 0),
    list_price               BIGINT  NOT NULL CHECK (list_price >= 0),
    pricing_mode             TEXT    CHECK (pricing_mode IN ('launch', 'rrp', 'sale')),
    stripe_session_id        TEXT    UNIQUE,
    stripe_payment_intent_id TEXT    UNIQUE,
    discount_code_id         BIGINT  REFERENCES discount_codes (id),
    discount_released        BIGINT  NOT NULL DEFAULT 0 CHECK (discount_released IN (0, 1)),
    charge_key               TEXT    UNIQUE,
    amount_refunded          BIGINT  NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    status                   TEXT    NOT NULL CHECK (status IN ('pending', 'completed', 'failed', 'refunded', 'expired')),
    created_at               BIGINT  NOT NULL,
    completed_at             BIGINT
);
CREATE INDEX orders_account ON orders (account_id);

CREATE TABLE stripe_events (
    event_id      TEXT   PRIMARY KEY,
    event_type    TEXT   NOT NULL,
    received_at   BIGINT NOT NULL,
    processed_at  BIGINT,
    outcome       TEXT,
    payload       TEXT,
    status        TEXT   NOT NULL DEFAULT 'received'
                  CHECK (status IN ('received', 'applied', 'ignored', 'waiting', 'expired', 'failed')),
    waiting_on    TEXT,
    claimed_by    TEXT,
    claimed_until BIGINT
);
CREATE INDEX stripe_events_waiting_on ON stripe_events (waiting_on) WHERE status = 'waiting';
CREATE INDEX stripe_events_waiting_since ON stripe_events (received_at) WHERE status = 'waiting';
CREATE INDEX stripe_events_by_status ON stripe_events (status, received_at);

CREATE TABLE account_tokens (
    id         BIGSERIAL PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    token_hash TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX account_tokens_account ON account_tokens (account_id);

CREATE TABLE inbound_messages (
    message_sid   TEXT   PRIMARY KEY,
    from_number   TEXT   NOT NULL,
    account_id    BIGINT REFERENCES accounts (id),
    body          TEXT   NOT NULL,
    reply         TEXT,
    created_at    BIGINT NOT NULL,
    state         TEXT   NOT NULL DEFAULT 'answered' CHECK (state IN ('claimed', 'answered')),
    claimed_by    TEXT,
    claimed_until BIGINT
);

CREATE TABLE messages (
    id                       BIGSERIAL PRIMARY KEY,
    account_id               BIGINT  REFERENCES accounts (id),
    kind                     TEXT    NOT NULL CHECK (kind IN ('outbound', 'reply', 'warning')),
    idempotency_key          TEXT,
    to_number                TEXT    NOT NULL,
    country                  TEXT    NOT NULL,
    encoding                 TEXT    NOT NULL,
    segments                 BIGINT  NOT NULL CHECK (segments > 0),
    price_per_segment        BIGINT  NOT NULL,
    carrier_cost_per_segment BIGINT  NOT NULL,
    charged                  BIGINT  NOT NULL CHECK (charged >= 0),
    state                    TEXT    NOT NULL CHECK (state IN ('reserved', 'sent', 'voided')),
    twilio_sid               TEXT    UNIQUE,
    twilio_status            TEXT,
    refunded                 BIGINT  NOT NULL DEFAULT 0 CHECK (refunded IN (0, 1)),
    actual_cost              BIGINT,
    price_checks             BIGINT  NOT NULL DEFAULT 0,
    next_price_check_at      BIGINT,
    created_at               BIGINT  NOT NULL,
    instance_id              TEXT,
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX messages_price_due ON messages (next_price_check_at) WHERE actual_cost IS NULL AND twilio_sid IS NOT NULL;
CREATE INDEX messages_unresolved ON messages (state) WHERE state = 'reserved';

CREATE TABLE early_message_statuses (
    twilio_sid  TEXT   PRIMARY KEY,
    status      TEXT   NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE TABLE notices (
    id              BIGSERIAL PRIMARY KEY,
    account_id      BIGINT NOT NULL REFERENCES accounts (id),
    kind            TEXT   NOT NULL CHECK (kind IN ('low_balance_warning')),
    dedupe_key      TEXT   NOT NULL UNIQUE,
    payload         TEXT   NOT NULL,
    state           TEXT   NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'unknown')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    claimed_until   BIGINT,
    created_at      BIGINT NOT NULL,
    sent_at         BIGINT,
    twilio_sid      TEXT,
    last_error      TEXT
);
CREATE INDEX notices_due ON notices (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notices_sending ON notices (claimed_until) WHERE state = 'sending';

CREATE TABLE instances (
    id           TEXT   PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
