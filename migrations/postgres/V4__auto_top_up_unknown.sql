-- An auto top-up whose charge is older than Stripe surely keeps its
-- idempotency key is never sent again: Stripe is asked what became of it.
-- Two new ends: 'not_charged' (Stripe had no charge for it) and 'unknown'
-- (Stripe could not be asked for too long; auto top-up is turned off).
ALTER TABLE auto_top_ups DROP CONSTRAINT auto_top_ups_status_check;
ALTER TABLE auto_top_ups ADD CONSTRAINT auto_top_ups_status_check
    CHECK (status IN ('pending', 'charging', 'processing', 'succeeded', 'declined',
                      'authentication_required', 'failed', 'not_charged', 'unknown'));
