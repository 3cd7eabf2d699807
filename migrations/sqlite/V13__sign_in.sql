-- Sign-in by phone. A code texted to a phone is kept only as a hash, with
-- the address that asked for it (the limits count codes per phone and per
-- address) and how many wrong codes were tried against it. A proved phone
-- without access gets a sign-up token (a hash here) for its checkout.
-- Account tokens made by signing in expire; every token says where it
-- came from.
CREATE TABLE sign_in_codes (
    id             INTEGER PRIMARY KEY,
    phone          TEXT    NOT NULL,
    code_hash      TEXT    NOT NULL,
    client_address TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    wrong_attempts INTEGER NOT NULL DEFAULT 0 CHECK (wrong_attempts >= 0),
    used_at        INTEGER
);
CREATE INDEX sign_in_codes_phone ON sign_in_codes (phone, created_at);
CREATE INDEX sign_in_codes_address ON sign_in_codes (client_address, created_at);

CREATE TABLE sign_up_tokens (
    token_hash TEXT    PRIMARY KEY,
    phone      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

ALTER TABLE account_tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE account_tokens ADD COLUMN source TEXT NOT NULL DEFAULT 'admin'
    CHECK (source IN ('admin', 'sign_in'));
