-- Account holders sign in with a random token, shown once; only its
-- SHA-256 is kept. Revoking sets revoked_at.
CREATE TABLE account_tokens (
    id         INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts (id),
    token_hash TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX account_tokens_account ON account_tokens (account_id);
