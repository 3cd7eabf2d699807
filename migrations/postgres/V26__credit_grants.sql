-- Credit grants (#36): every credit is a grant, named within its account by
-- the seq of the ledger row that made it. Its lasting facts are here; what
-- is left of each grant lives in the account's snapshot
-- (`account_balances.grants`, moved by the same guarded update as the
-- balance), and each row says which grants it took from or gave back to
-- (`transactions.funded_by`). Grant 0, what an account owes, has no row.
CREATE TABLE credit_grants (
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    id         BIGINT NOT NULL CHECK (id > 0),
    category   TEXT   NOT NULL CHECK (category IN ('paid', 'promotional')),
    source     TEXT   NOT NULL CHECK (source IN ('access', 'top_up', 'buy', 'auto_top_up',
                                                 'adjustment', 'give_back', 'migration')),
    order_id   BIGINT,
    amount     BIGINT NOT NULL CHECK (amount > 0),
    priority   BIGINT NOT NULL CHECK (priority BETWEEN 0 AND 100),
    granted_at BIGINT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (account_id, id)
);

-- What is left of each grant: NULL until the backfill (run by `migrate`
-- and at start-up, after these statements) has replayed the account's
-- ledger. An account made from now on starts with none ('').
ALTER TABLE account_balances ADD COLUMN grants TEXT DEFAULT '';
UPDATE account_balances SET grants = NULL;
-- (No index finds them: one would be kept up to date by every debit's
-- update of the snapshot, to save a scan at start-up.)

-- A new kind of row, `expiry`, and each row's funding.
ALTER TABLE transactions DROP CONSTRAINT transactions_type_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_type_check
    CHECK (type IN ('credit', 'debit', 'refund', 'adjustment', 'expiry'));
ALTER TABLE transactions ADD COLUMN funded_by TEXT;
