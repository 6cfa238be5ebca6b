-- The audio an episode's transcriber could not decode ({"audio_sha256": ..., "transcriber": ...}), so that a plain
-- run skips the episode until its file or the transcriber changes, instead of failing it again every night.
ALTER TABLE episodes ADD COLUMN undecodable_audio jsonb;
