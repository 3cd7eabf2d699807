-- Strangers, second round (issue 34's review).
--
-- The caps of the hour on sign-in codes hold only for phones without an
-- account (a customer proved the phone already): each code says whether
-- its phone had one when it was asked for (customer = 1: the caps neither
-- count nor hold it), and whether a cap held it back (capped = 1: stored
-- as any other, used at once, never texted). Its country is the
-- destination the rate table prices (GG's codes count as GB's under an
-- alias GG = "GB"); a code of an earlier release has its own region there.
ALTER TABLE sign_in_codes ADD COLUMN customer BIGINT NOT NULL DEFAULT 0 CHECK (customer IN (0, 1));
ALTER TABLE sign_in_codes ADD COLUMN capped BIGINT NOT NULL DEFAULT 0 CHECK (capped IN (0, 1));
-- Codes are counted per phone and asking address.
CREATE INDEX sign_in_codes_phone_address ON sign_in_codes (phone, client_address, created_at);

-- Wrong codes, by the phone they were tried for and the address that
-- tried them (an IPv6 client: its /64): five in an hour from one address,
-- and it can no longer sign that phone in. Kept for an hour.
CREATE TABLE sign_in_wrong_codes (
    id             BIGSERIAL PRIMARY KEY,
    phone          TEXT    NOT NULL,
    client_address TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL
);
CREATE INDEX sign_in_wrong_codes_phone ON sign_in_wrong_codes (phone, client_address, created_at);
CREATE INDEX sign_in_wrong_codes_created ON sign_in_wrong_codes (created_at);
