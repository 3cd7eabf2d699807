-- Messages: inbound commands (deduplicated by Twilio's MessageSid, with the
-- reply they got), and every message sent, with what it cost the account,
-- what the rate table says the carrier charges, and what Twilio actually
-- charged (fetched later) for reconciliation. Amounts are micro-dollars.

CREATE TABLE inbound_messages (
    message_sid TEXT    PRIMARY KEY,
    from_number TEXT    NOT NULL,
    account_id  INTEGER REFERENCES accounts (id),
    body        TEXT    NOT NULL,
    -- NULL when no reply was sent
    reply       TEXT,
    created_at  INTEGER NOT NULL
);

CREATE TABLE messages (
    id                       INTEGER PRIMARY KEY,
    account_id               INTEGER REFERENCES accounts (id),
    -- outbound: for the host application, charged; reply and warning:
    -- service messages, not charged but costed
    kind                     TEXT    NOT NULL CHECK (kind IN ('outbound', 'reply', 'warning')),
    idempotency_key          TEXT,
    to_number                TEXT    NOT NULL,
    country                  TEXT    NOT NULL,
    encoding                 TEXT    NOT NULL,
    segments                 INTEGER NOT NULL CHECK (segments > 0),
    price_per_segment        INTEGER NOT NULL,
    carrier_cost_per_segment INTEGER NOT NULL,
    charged                  INTEGER NOT NULL CHECK (charged >= 0),
    -- reserved: debited, not yet handed to Twilio; sent: accepted by
    -- Twilio; voided: the send failed and the debit was given back
    state                    TEXT    NOT NULL CHECK (state IN ('reserved', 'sent', 'voided')),
    twilio_sid               TEXT    UNIQUE,
    twilio_status            TEXT,
    refunded                 INTEGER NOT NULL DEFAULT 0 CHECK (refunded IN (0, 1)),
    -- what Twilio charged, positive; NULL until known
    actual_cost              INTEGER,
    price_checks             INTEGER NOT NULL DEFAULT 0,
    next_price_check_at      INTEGER,
    created_at               INTEGER NOT NULL,
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX messages_price_due ON messages (next_price_check_at) WHERE actual_cost IS NULL AND twilio_sid IS NOT NULL;
CREATE INDEX messages_unresolved ON messages (state) WHERE state = 'reserved';
