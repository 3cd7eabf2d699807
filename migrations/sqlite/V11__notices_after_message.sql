-- A notice caused by an outbound message (the low-balance warning its debit
-- set off) waits until that message is resolved (sent or voided), so the
-- warning never reaches the phone before the message that caused it.
ALTER TABLE notices ADD COLUMN after_message INTEGER REFERENCES messages (id);
