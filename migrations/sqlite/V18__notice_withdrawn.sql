-- A low-balance warning set off by a message that was then not sent (its
-- cost given back) is withdrawn with the row that gives the cost back: it
-- would describe a balance that did not last. SQLite changes a CHECK by
-- making the table again.
CREATE TABLE notices_new (
    id              INTEGER PRIMARY KEY,
    account_id      INTEGER NOT NULL REFERENCES accounts (id),
    kind            TEXT    NOT NULL CHECK (kind IN ('low_balance_warning', 'auto_top_up')),
    dedupe_key      TEXT    NOT NULL UNIQUE,
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'unknown', 'withdrawn')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    claimed_until   INTEGER,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    twilio_sid      TEXT,
    last_error      TEXT,
    after_message   INTEGER REFERENCES messages (id)
);
INSERT INTO notices_new SELECT id, account_id, kind, dedupe_key, payload, state, attempts,
    next_attempt_at, claimed_until, created_at, sent_at, twilio_sid, last_error, after_message
    FROM notices;
DROP TABLE notices;
ALTER TABLE notices_new RENAME TO notices;
CREATE INDEX notices_due ON notices (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notices_sending ON notices (claimed_until) WHERE state = 'sending';
CREATE INDEX notices_after_message ON notices (after_message) WHERE state = 'pending';
