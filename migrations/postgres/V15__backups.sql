-- The backups `sms-credit backup` took of this database: when the snapshot
-- was read (Unix milliseconds), where the file was put, what it held, its
-- size and how long it took. The console shows the last one, and /metrics
-- its time, so that an alert can fire when backups stop.
CREATE TABLE backups (
    id           BIGSERIAL PRIMARY KEY,
    taken_at     BIGINT  NOT NULL,
    path         TEXT    NOT NULL,
    accounts     BIGINT  NOT NULL CHECK (accounts >= 0),
    transactions BIGINT  NOT NULL CHECK (transactions >= 0),
    bytes        BIGINT  NOT NULL CHECK (bytes >= 0),
    duration_ms  BIGINT  NOT NULL CHECK (duration_ms >= 0)
);

CREATE INDEX backups_taken ON backups (taken_at);
