-- One row per group commit that wrote ledger rows: which accounts moved and
-- their first and last seq ('7:12-14;9:3-3'), and which process wrote it.
-- Another process that shares the file (the CLI beside a running server)
-- reads the rows it did not write, so its actors reload and its balance
-- feed delivers them. Old rows are pruned.

CREATE TABLE ledger_changes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    origin     TEXT    NOT NULL,
    changes    TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
