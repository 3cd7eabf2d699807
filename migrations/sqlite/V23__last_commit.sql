-- Who made the last commit to this file: every commit of a process's writer
-- sets it, in the same transaction (`origin` names the process, `number` is
-- the commit's number in it). A reader that finds another process's commit
-- last in what it read makes the write-ahead log durable before it answers:
-- that process may not have fsynced it yet. One row, never another.
CREATE TABLE last_commit (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    origin TEXT    NOT NULL,
    number INTEGER NOT NULL
);
INSERT INTO last_commit (id, origin, number) VALUES (1, '', 0);
