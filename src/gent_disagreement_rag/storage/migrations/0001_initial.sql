-- Episodes, their retrieval segments, and embeddings of several models side by side.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE episodes (
    episode_id        text PRIMARY KEY,
    title             text,
    published         date,
    file_name         text,
    audio_url         text,
    guid              text UNIQUE,
    source            text NOT NULL DEFAULT 'catalogue' CHECK (source IN ('catalogue', 'feed')),
    speakers_map      jsonb NOT NULL DEFAULT '{}'::jsonb,
    audio_sha256      text,
    duration_seconds  double precision,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processed', 'failed')),
    last_error        text,
    processed_sha256  text,
    segments_sha256   text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    processed_at      timestamptz
);

CREATE TABLE segments (
    episode_id     text NOT NULL REFERENCES episodes (episode_id) ON DELETE CASCADE,
    position       integer NOT NULL,
    speaker        text NOT NULL,
    start_seconds  double precision NOT NULL,
    end_seconds    double precision NOT NULL,
    text           text NOT NULL,
    token_count    integer NOT NULL,
    tsv            tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    PRIMARY KEY (episode_id, position)
);
CREATE INDEX segments_tsv_idx ON segments USING gin (tsv);

-- One row per embedding model; each gets its own partial HNSW index over a cast of `embeddings.embedding`.
CREATE TABLE embedding_models (
    model_id    text PRIMARY KEY,
    provider    text NOT NULL,
    model       text NOT NULL,
    dimensions  integer NOT NULL CHECK (dimensions BETWEEN 1 AND 2000),
    index_name  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE embeddings (
    model_id    text NOT NULL REFERENCES embedding_models (model_id) ON DELETE CASCADE,
    episode_id  text NOT NULL,
    position    integer NOT NULL,
    embedding   vector NOT NULL,
    PRIMARY KEY (model_id, episode_id, position),
    FOREIGN KEY (episode_id, position) REFERENCES segments (episode_id, position) ON DELETE CASCADE
);
CREATE INDEX embeddings_episode_idx ON embeddings (episode_id, position);

-- Cost ledger: every provider call, per episode and run.
CREATE TABLE provider_calls (
    id             bigserial PRIMARY KEY,
    run_id         text,
    episode_id     text REFERENCES episodes (episode_id) ON DELETE SET NULL,
    stage          text NOT NULL,
    provider       text NOT NULL,
    model          text NOT NULL,
    requests       integer NOT NULL DEFAULT 0,
    audio_seconds  double precision NOT NULL DEFAULT 0,
    tokens         bigint NOT NULL DEFAULT 0,
    cost_usd       numeric(12, 6) NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provider_calls_episode_idx ON provider_calls (episode_id, created_at);
