-- An adjustment's reason is the operator's; what the account holder reads
-- of the row is its description. Adjustments made before kept the reason
-- as their description: it moves to `reason`, and the holder reads the
-- neutral description instead.
ALTER TABLE transactions ADD COLUMN reason TEXT;
UPDATE transactions SET reason = description, description = 'Balance adjustment'
 WHERE type = 'adjustment';
