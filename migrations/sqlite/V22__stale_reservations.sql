-- Reservations of live instances are resolved too, by a sweep that asks
-- Twilio what became of each send.
--   body_sha256:   SHA-256 (hex) of an outbound message's body, so that the
--                  sweep can tell its send among Twilio's messages without
--                  keeping the text (NULL: reserved by an earlier release).
--   voiding:       1 once giving its cost back has begun: from then on it is
--                  only ever voided, never marked sent.
--   next_sweep_at: the sweep's lease: no sweep takes it again before then,
--                  while swept_by, the instance that took it, is alive.
ALTER TABLE messages ADD COLUMN body_sha256 TEXT;
ALTER TABLE messages ADD COLUMN voiding INTEGER NOT NULL DEFAULT 0 CHECK (voiding IN (0, 1));
ALTER TABLE messages ADD COLUMN next_sweep_at INTEGER;
ALTER TABLE messages ADD COLUMN swept_by TEXT;
