-- Strangers (issue 34).
-- A sign-up token is used up by its exchange and revoked with its
-- account's tokens, found by the account's phone.
CREATE INDEX sign_up_tokens_phone ON sign_up_tokens (phone);
