-- Credit grants (#36): every credit is a grant, named within its account by
-- the seq of the ledger row that made it. Its lasting facts are here; what
-- is left of each grant lives in the account's snapshot
-- (`account_balances.grants`, moved by the same guarded update as the
-- balance), and each row says which grants it took from or gave back to
-- (`transactions.funded_by`). Grant 0, what an account owes, has no row.
CREATE TABLE credit_grants (
    account_id INTEGER NOT NULL REFERENCES accounts (id),
    id         INTEGER NOT NULL CHECK (id > 0),
    category   TEXT    NOT NULL CHECK (category IN ('paid', 'promotional')),
    source     TEXT    NOT NULL CHECK (source IN ('access', 'top_up', 'buy', 'auto_top_up',
                                                  'adjustment', 'give_back', 'migration')),
    order_id   INTEGER,
    amount     INTEGER NOT NULL CHECK (amount > 0),
    priority   INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 100),
    granted_at INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (account_id, id)
) WITHOUT ROWID;

-- What is left of each grant: NULL until the backfill (run by `migrate`
-- and at start-up, after these statements) has replayed the account's
-- ledger. An account made from now on starts with none ('').
ALTER TABLE account_balances ADD COLUMN grants TEXT DEFAULT '';
UPDATE account_balances SET grants = NULL;
-- (No index finds them: one would be kept up to date by every debit's
-- update of the snapshot, to save a scan at start-up.)

-- A new kind of row, `expiry`, and each row's funding: SQLite cannot alter
-- a CHECK, so the ledger is rebuilt as it stands (WITHOUT ROWID, its key
-- and its indexes as V1, V15, V19 and V26 left them).
CREATE TABLE transactions_with_grants (
    account_id      INTEGER NOT NULL REFERENCES accounts (id),
    seq             INTEGER NOT NULL CHECK (seq > 0),
    type            TEXT    NOT NULL CHECK (type IN ('credit', 'debit', 'refund', 'adjustment', 'expiry')),
    amount          INTEGER NOT NULL,
    balance_after   INTEGER NOT NULL,
    idempotency_key TEXT    NOT NULL,
    order_id        INTEGER,
    description     TEXT    NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    reason          TEXT,
    funded_by       TEXT,
    PRIMARY KEY (account_id, seq)
) WITHOUT ROWID;
INSERT INTO transactions_with_grants (account_id, seq, type, amount, balance_after,
                                      idempotency_key, order_id, description, created_at, reason)
     SELECT account_id, seq, type, amount, balance_after,
            idempotency_key, order_id, description, created_at, reason
       FROM transactions;
DROP TABLE transactions;
ALTER TABLE transactions_with_grants RENAME TO transactions;
CREATE UNIQUE INDEX transactions_account_idempotency_key
    ON transactions (account_id, idempotency_key);
CREATE INDEX transactions_refunds ON transactions (created_at) WHERE type = 'refund';
CREATE INDEX transactions_order ON transactions (order_id) WHERE order_id IS NOT NULL;
