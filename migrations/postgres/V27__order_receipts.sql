-- Stripe's receipt of a paid order (the charge's `receipt_url`), learnt
-- after the order completed, when its holder lists their payments; NULL
-- until then, and only ever set once (#36). `receipt_asked_at`: when Stripe
-- was last asked for it (an order Stripe gives none for is asked again
-- only an hour later, so a listing never asks for the same ones over and
-- over, and older orders get their turn).
ALTER TABLE orders ADD COLUMN receipt_url TEXT;
ALTER TABLE orders ADD COLUMN receipt_asked_at BIGINT;
