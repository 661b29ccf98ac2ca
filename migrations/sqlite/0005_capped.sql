-- A ruleset that matched more samples than the match cap within the cap window stops
-- recording matches until it is edited or re-enabled.
ALTER TABLE rulesets ADD COLUMN capped_at INTEGER;
