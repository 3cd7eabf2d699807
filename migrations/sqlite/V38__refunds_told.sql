-- The host application is told `payment.refunded` once per refund, for
-- good. A refund whose row took credit back is told by that row's event
-- (the ledger row, never pruned, is its mark); one whose row took nothing
-- (a dispute or an earlier refund held the credit back already) is told by
-- an event of its own, and `told` is set in the same transaction. The next
-- settling of its order (any event about it, the legacy sweep) settles
-- every refund without a row again, and decides from `told` whether to
-- tell it: never from the event's dedupe key, which the webhook retention
-- prunes with the event.
-- `told`: 1 once the host was told of the refund otherwise than by a
-- ledger row of its own: by its own event, or by the earlier release's
-- running total (a refund its order's legacy record held back, recorded
-- `legacy_replacement`). 0: not told yet, or told by its row.
ALTER TABLE stripe_refunds ADD COLUMN told INTEGER NOT NULL DEFAULT 0 CHECK (told IN (0, 1));

-- The refunds recorded before this column, told already:
--   * those the earlier release told by its running total;
--   * those whose `payment.refunded` is still kept;
--   * those that stand, without a row of their own, recorded longer ago
--     than the least webhook retention a server allows (7 days): their
--     event may have been pruned. A settling of an order tells every
--     refund it recorded before it ends, so each such refund was told
--     unless every settling of its order since its recording failed
--     before that: the event that recorded it failing until Stripe gave
--     up (three days), or a sweep round of a release before the settled
--     mark (sqlite V34, postgres V25), which never came back to an order
--     whose record it had replaced. Those few are marked told too, and
--     not told: telling the host twice of every refund whose event was
--     pruned is the greater wrong. A refund recorded more recently with
--     no event kept was never told (none of its can have been pruned):
--     the next settling of its order tells it, once.
UPDATE stripe_refunds SET told = 1
 WHERE standing IN ('counted', 'failed')
   AND (recorded_by = 'legacy_replacement'
        OR EXISTS (SELECT 1 FROM webhook_events e
                    WHERE e.dedupe_key = 'payment.refunded:' || stripe_refunds.refund_id)
        OR (standing = 'counted'
            AND recorded_at < CAST(strftime('%s', 'now') AS INTEGER) * 1000 - 7 * 86400000
            AND NOT EXISTS (SELECT 1 FROM orders o JOIN transactions t ON t.account_id = o.account_id
                             WHERE o.id = stripe_refunds.order_id
                               AND t.idempotency_key = 'stripe-refund:' || stripe_refunds.refund_id)));
