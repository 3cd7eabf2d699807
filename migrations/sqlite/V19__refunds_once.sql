-- What an order's refunds took back is read from the ledger (its refund
-- rows) before each refund's credit is taken back: found by the order.
CREATE INDEX transactions_order ON transactions (order_id) WHERE order_id IS NOT NULL;
