-- A ruleset that matched more samples than the match cap within the cap window stops
-- recording matches until it is edited or re-enabled; matches before that moment no longer
-- count toward the cap.
ALTER TABLE rulesets ADD COLUMN capped_at INTEGER;
ALTER TABLE rulesets ADD COLUMN cap_lifted_at INTEGER;
