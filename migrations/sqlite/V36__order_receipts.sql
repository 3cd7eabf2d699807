-- Stripe's receipt of a paid order (the charge's `receipt_url`), learnt
-- after the order completed, when its holder first lists their payments;
-- NULL until then. Only ever set once (#36).
ALTER TABLE orders ADD COLUMN receipt_url TEXT;
