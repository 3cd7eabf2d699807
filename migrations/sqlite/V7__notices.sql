-- Notices to send to a customer by SMS (a low-balance warning, …), queued in
-- the same transaction as the ledger write that made them due, and sent
-- after the request that caused them has been answered. One per dedupe_key.
-- pending: to send (from next_attempt_at); sending: handed to Twilio under a
-- lease (claimed_until); sent; failed: refused for good; unknown: a worker
-- stopped mid-send, so whether it went out is not known (never sent again).

CREATE TABLE notices (
    id              INTEGER PRIMARY KEY,
    account_id      INTEGER NOT NULL REFERENCES accounts (id),
    kind            TEXT    NOT NULL CHECK (kind IN ('low_balance_warning')),
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
CREATE INDEX notices_due ON notices (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notices_sending ON notices (claimed_until) WHERE state = 'sending';
