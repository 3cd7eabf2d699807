-- Webhooks to the host application. webhook_events is the outbox: each
-- event is inserted in the same transaction as the change that caused it
-- (one per dedupe_key), and fanned out at once into webhook_deliveries,
-- one per enabled endpoint whose filter takes it ('*' or ',type,').
-- A delivery is pending (from next_attempt_at), sending (under a lease,
-- claimed_until, by claimed_by), delivered, or failed (given up).

CREATE TABLE webhook_endpoints (
    id                     TEXT    PRIMARY KEY,
    url                    TEXT    NOT NULL,
    events                 TEXT    NOT NULL,
    description            TEXT    NOT NULL DEFAULT '',
    enabled                BIGINT  NOT NULL CHECK (enabled IN (0, 1)),
    disabled_reason        TEXT,
    secret                 TEXT    NOT NULL,
    previous_secret        TEXT,
    previous_secret_until  BIGINT,
    failing_since          BIGINT,
    created_at             BIGINT  NOT NULL,
    deleted                BIGINT  NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1))
);

CREATE TABLE webhook_events (
    id          TEXT    PRIMARY KEY,
    type        TEXT    NOT NULL,
    account_id  BIGINT,
    dedupe_key  TEXT    NOT NULL UNIQUE,
    payload     TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
CREATE INDEX webhook_events_created ON webhook_events (created_at);

CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    endpoint_id     TEXT    NOT NULL REFERENCES webhook_endpoints (id),
    event_id        TEXT    NOT NULL REFERENCES webhook_events (id),
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    claimed_until   BIGINT,
    claimed_by      TEXT,
    created_at      BIGINT  NOT NULL,
    finished_at     BIGINT
);
CREATE INDEX webhook_deliveries_sending ON webhook_deliveries (endpoint_id, claimed_until) WHERE state = 'sending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);

CREATE TABLE webhook_attempts (
    id           BIGSERIAL PRIMARY KEY,
    delivery_id  BIGINT  NOT NULL REFERENCES webhook_deliveries (id),
    endpoint_id  TEXT    NOT NULL,
    at           BIGINT  NOT NULL,
    status_code  BIGINT,
    error        TEXT,
    duration_ms  BIGINT  NOT NULL
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);
-- A claim takes one endpoint's due deliveries in order.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, next_attempt_at) WHERE state = 'pending';
