-- The voice library (issue 24). `episode_voices`: what each speaker of an episode's transcript sounds like (the mean
-- speaker embedding of their speech, from the cached audio; the speaker stage writes it once per episode and
-- model). `voices`: one row per speaker name and model; `voice_samples`: its samples, one per episode where the
-- name was given to a speaker (by the catalogue's speakers_map or `gdr speakers name`). An episode without a map
-- names each speaker after the nearest voice above a threshold, "Speaker N" otherwise.
CREATE TABLE episode_voices (
    episode_id  text NOT NULL REFERENCES episodes (episode_id) ON DELETE CASCADE,
    model       text NOT NULL,
    speaker     integer NOT NULL,
    embedding   real[] NOT NULL,
    seconds     double precision NOT NULL,
    pitch       real,  -- median pitch in semitones (12 log2 Hz) of the embedded speech; NULL: unvoiced
    PRIMARY KEY (episode_id, model, speaker)
);

CREATE TABLE voices (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    model       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, model)
);

CREATE TABLE voice_samples (
    voice_id    bigint NOT NULL REFERENCES voices (id) ON DELETE CASCADE,
    episode_id  text NOT NULL REFERENCES episodes (episode_id) ON DELETE CASCADE,
    speaker     integer NOT NULL,
    embedding   real[] NOT NULL,
    seconds     double precision NOT NULL,
    pitch       real,
    PRIMARY KEY (voice_id, episode_id, speaker)
);
