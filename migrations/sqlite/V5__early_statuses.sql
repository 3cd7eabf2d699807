-- Twilio status callbacks that arrive before the send's answer has been
-- recorded (Twilio can fail a message and call back within milliseconds):
-- kept here and applied when the message's sid is written. A `failed` is
-- never overwritten by a later, less final status.

CREATE TABLE early_message_statuses (
    twilio_sid  TEXT    PRIMARY KEY,
    status      TEXT    NOT NULL,
    received_at INTEGER NOT NULL
);
