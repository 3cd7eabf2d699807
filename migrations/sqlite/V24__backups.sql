-- The backups `sms-credit backup` took of this database: when the snapshot
-- was read (Unix milliseconds), where the file was put, what it held, its
-- size and how long it took. The console shows the last one, and /metrics
-- its time, so that an alert can fire when backups stop.
CREATE TABLE backups (
    id           INTEGER PRIMARY KEY,
    taken_at     INTEGER NOT NULL,
    path         TEXT    NOT NULL,
    accounts     INTEGER NOT NULL CHECK (accounts >= 0),
    transactions INTEGER NOT NULL CHECK (transactions >= 0),
    bytes        INTEGER NOT NULL CHECK (bytes >= 0),
    duration_ms  INTEGER NOT NULL CHECK (duration_ms >= 0)
);

CREATE INDEX backups_taken ON backups (taken_at);
