-- Feed tickets: single-use, short-lived passes to open the balance feed
-- from a browser, shared by every instance (one bought from one instance
-- opens the feed on another). Kept only as the SHA-256 of the ticket, with
-- what it opens (one account, or every account for the admin) and the
-- SHA-256 of the account token it was bought with (none for the admin's):
-- it opens a feed only while that token is live. Redeeming deletes the row.
CREATE TABLE feed_tickets (
    ticket_hash TEXT    PRIMARY KEY,
    scope       TEXT    NOT NULL CHECK (scope IN ('account', 'admin')),
    account_id  BIGINT  REFERENCES accounts (id),
    token_hash  TEXT,
    expires_at  BIGINT  NOT NULL,
    CHECK ((scope = 'account') = (account_id IS NOT NULL)),
    CHECK (scope = 'account' OR token_hash IS NULL)
);
-- Issuing deletes expired tickets, oldest first.
CREATE INDEX feed_tickets_expiry ON feed_tickets (expires_at);
