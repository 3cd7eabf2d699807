-- An auto top-up whose charge is older than Stripe surely keeps its
-- idempotency key is never sent again: Stripe is asked what became of it.
-- Two new ends: 'not_charged' (Stripe had no charge for it) and 'unknown'
-- (Stripe could not be asked for too long; auto top-up is turned off).
CREATE TABLE auto_top_ups_new (
    id                INTEGER PRIMARY KEY,
    account_id        INTEGER NOT NULL REFERENCES accounts (id),
    n                 INTEGER NOT NULL CHECK (n > 0),
    amount            INTEGER NOT NULL CHECK (amount > 0),
    month             TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('pending', 'charging', 'processing', 'succeeded',
                                                         'declined', 'authentication_required', 'failed',
                                                         'not_charged', 'unknown')),
    reason            TEXT,
    order_id          INTEGER REFERENCES orders (id),
    payment_intent_id TEXT,
    claimed_until     INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (account_id, n)
);
INSERT INTO auto_top_ups_new
    SELECT id, account_id, n, amount, month, status, reason, order_id, payment_intent_id,
           claimed_until, created_at, updated_at
      FROM auto_top_ups;
DROP TABLE auto_top_ups;
ALTER TABLE auto_top_ups_new RENAME TO auto_top_ups;
CREATE UNIQUE INDEX auto_top_ups_one_in_flight ON auto_top_ups (account_id)
    WHERE status IN ('pending', 'charging', 'processing');
CREATE INDEX auto_top_ups_claimable ON auto_top_ups (claimed_until)
    WHERE status IN ('pending', 'charging');
