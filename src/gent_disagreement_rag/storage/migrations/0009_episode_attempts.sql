-- Every attempt at an episode within a run, on whichever worker took it: an attempt whose process died has
-- no ended_at, and the run's summary names its worker beside the one that finished the episode.
CREATE TABLE episode_attempts (
    id bigserial PRIMARY KEY,
    run_id text NOT NULL,
    episode_id text NOT NULL,
    worker text NOT NULL,
    flow_run_id text,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    outcome text
);
CREATE INDEX episode_attempts_run_episode ON episode_attempts (run_id, episode_id, id);
