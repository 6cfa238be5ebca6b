-- What made an episode's stored segments (chunker parameters, token counter, speaker names), so that a
-- settings change marks the episode stale instead of leaving it "up to date" by its audio hash alone.
-- NULL: processed before this was recorded (not treated as stale: its cache may be gone).
ALTER TABLE episodes ADD COLUMN segments_config jsonb;
