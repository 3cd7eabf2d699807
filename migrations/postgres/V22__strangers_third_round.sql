-- Strangers, third round (issue 34's third review).
--
-- The admin's lift keeps each address's wrong codes for the phone (a
-- stranger's address that guessed wrong five times does not start again),
-- marked lifted = 1: such an address may still sign the phone in with a
-- code it asked for after the lift (the customer who mistyped), and with
-- nothing else.
ALTER TABLE sign_in_wrong_codes ADD COLUMN lifted BIGINT NOT NULL DEFAULT 0 CHECK (lifted IN (0, 1));

-- Wrong discount codes tried with a sign-up token: at ten, the token is
-- used up (an anonymous buyer rotating addresses gets no more guesses).
ALTER TABLE sign_up_tokens ADD COLUMN wrong_discount_codes BIGINT NOT NULL DEFAULT 0
    CHECK (wrong_discount_codes >= 0);

-- When a number last opted back in (START, UNSTOP): a 21610 status
-- callback about a message sent before that is old news (replayed or
-- late), not a new opt-out.
CREATE TABLE opt_ins (
    phone       TEXT    PRIMARY KEY,
    opted_in_at BIGINT NOT NULL
);
