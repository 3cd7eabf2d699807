-- Each instance is judged gone by its own timeout (its
-- instance_timeout_secs), not by the judge's: a server started with a
-- longer one beats less often, and another with a shorter one must not
-- take it for gone between two beats (and give back the reservation of a
-- send it has in flight). Its heartbeat writes it. A row without it (an
-- earlier release's server, beating during an upgrade) is judged by the
-- timeout its name ends with (`3f9a…-30000ms`, as #37's review had it),
-- or, if none, by the judge's own.
ALTER TABLE instances ADD COLUMN timeout_ms INTEGER CHECK (timeout_ms > 0);
