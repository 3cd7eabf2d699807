-- The core ledger: accounts, the account actor's persisted snapshot, and the
-- append-only ledger of every change of balance. Amounts are signed integer
-- micro-dollars; times are Unix milliseconds.

CREATE TABLE accounts (
    id                 INTEGER PRIMARY KEY,
    phone              TEXT    NOT NULL UNIQUE,   -- E.164
    email              TEXT,
    stripe_customer_id TEXT    UNIQUE,
    status             TEXT    NOT NULL CHECK (status IN ('pending', 'active', 'suspended', 'closed')),
    created_at         INTEGER NOT NULL
);

-- One row per account, written in the same transaction as the ledger rows
-- that change it: what the account actor loads on activation.
CREATE TABLE account_balances (
    account_id            INTEGER PRIMARY KEY REFERENCES accounts (id),
    balance               INTEGER NOT NULL,
    seq                   INTEGER NOT NULL,
    low_balance_warned_at INTEGER,
    updated_at            INTEGER NOT NULL
);

CREATE TABLE transactions (
    account_id      INTEGER NOT NULL REFERENCES accounts (id),
    seq             INTEGER NOT NULL CHECK (seq > 0),
    type            TEXT    NOT NULL CHECK (type IN ('credit', 'debit', 'refund', 'adjustment')),
    amount          INTEGER NOT NULL,
    balance_after   INTEGER NOT NULL,
    idempotency_key TEXT    NOT NULL,
    order_id        INTEGER,
    description     TEXT    NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (account_id, seq)
) WITHOUT ROWID;

CREATE UNIQUE INDEX transactions_account_idempotency_key
    ON transactions (account_id, idempotency_key);
