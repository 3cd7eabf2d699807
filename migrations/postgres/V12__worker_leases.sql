-- Auto top-up attempts are claimed one at a time, and each claim is
-- numbered: a worker renews its lease, and records that Stripe could not
-- be reached, only while the attempt's last claim is still its own.
ALTER TABLE auto_top_ups ADD COLUMN claims BIGINT NOT NULL DEFAULT 0;
