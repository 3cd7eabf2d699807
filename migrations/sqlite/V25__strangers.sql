-- Strangers (issue 34).
--
-- A sign-up token is used up by its exchange and revoked with its
-- account's tokens, found by the account's phone.
CREATE INDEX sign_up_tokens_phone ON sign_up_tokens (phone);

-- Numbers that opted out of texts: they texted STOP (or another opt-out
-- word: via 'keyword', with the word), or Twilio refused to text them
-- because they had (error 21610: via 'carrier'). START or UNSTOP removes
-- the row. Nothing but a reply to START, HELP or the STOP itself goes to a
-- number listed here.
CREATE TABLE opt_outs (
    phone        TEXT    PRIMARY KEY,
    opted_out_at INTEGER NOT NULL,
    via          TEXT    NOT NULL CHECK (via IN ('keyword', 'carrier')),
    keyword      TEXT
);

-- A notice to a number that opted out ends 'opted_out': never sent, never
-- tried again.
CREATE TABLE notices_new (
    id              INTEGER PRIMARY KEY,
    account_id      INTEGER NOT NULL REFERENCES accounts (id),
    kind            TEXT    NOT NULL CHECK (kind IN ('low_balance_warning', 'auto_top_up')),
    dedupe_key      TEXT    NOT NULL UNIQUE,
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'unknown', 'withdrawn', 'opted_out')),
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

-- Sign-in codes are capped per hour across all callers and per destination
-- country (the country each code went to; NULL: a code of an earlier
-- release), and the admin may lift a phone's limits: its codes until then
-- no longer count against the phone (lifted = 1), though they still count
-- against the address that asked and the caps.
ALTER TABLE sign_in_codes ADD COLUMN country TEXT;
ALTER TABLE sign_in_codes ADD COLUMN lifted INTEGER NOT NULL DEFAULT 0 CHECK (lifted IN (0, 1));
CREATE INDEX sign_in_codes_created ON sign_in_codes (created_at);
CREATE INDEX sign_in_codes_country ON sign_in_codes (country, created_at);
