-- A low-balance warning set off by a message that was then not sent (its
-- cost given back) is withdrawn with the row that gives the cost back: it
-- would describe a balance that did not last.
ALTER TABLE notices DROP CONSTRAINT notices_state_check;
ALTER TABLE notices ADD CONSTRAINT notices_state_check
    CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'unknown', 'withdrawn'));
CREATE INDEX notices_after_message ON notices (after_message) WHERE state = 'pending';
