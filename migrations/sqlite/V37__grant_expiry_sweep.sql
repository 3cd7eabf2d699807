-- The sweep of expired grants (#36): every 30 s of the clock each instance
-- looks for grants whose expiry has passed since where the sweep stands, and
-- asks their accounts' actors to write the expiry rows due (an account
-- nobody touches gets its expiry row within one round, not at its next
-- change). Found by this partial index, in the sweep's order, never by a
-- scan of the ledger; only grants that expire are in it.
CREATE INDEX credit_grants_expiry ON credit_grants (expires_at, account_id, id)
 WHERE expires_at IS NOT NULL;

-- Where the sweep stands, shared by every instance: each grant at or before
-- this position (its expiry, then its account, then its id) has had its
-- account's actor asked, successfully, or was left to its account's next
-- change (logged). It only moves forward. NULL: no grant yet (the first
-- round looks at every grant that has expired).
CREATE TABLE grant_expiry_sweep (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    swept_until      INTEGER,
    swept_account_id INTEGER,
    swept_grant_id   INTEGER,
    CHECK ((swept_until IS NULL) = (swept_account_id IS NULL)
       AND (swept_until IS NULL) = (swept_grant_id IS NULL))
);
INSERT INTO grant_expiry_sweep (id) VALUES (1);
