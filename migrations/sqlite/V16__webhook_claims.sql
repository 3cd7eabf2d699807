-- Webhooks keep their word: what pruning and ending deliveries look up.
-- A delivery made (delivered) or ended (failed: given up, or its endpoint
-- disabled or removed) is removed with its tries once older than the
-- retention, oldest first; an event goes once no delivery needs it.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at, id)
    WHERE state IN ('delivered', 'failed');
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id);
