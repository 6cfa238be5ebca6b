-- The publisher's transcript and chapters (issue 27). What the feed links (transcripts, one per format, and
-- chapters), which transcript made the stored segments (the publisher's or a transcriber's, and the link
-- read or tried), and why a publisher's transcript was not used. NULL source: processed before this was
-- recorded (not treated as stale: its transcription was paid for).
ALTER TABLE episodes
    ADD COLUMN season_number      integer,
    ADD COLUMN transcript_links   jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN chapters_url       text,
    ADD COLUMN transcript_source  text CHECK (transcript_source IN ('publisher', 'transcriber')),
    ADD COLUMN transcript_url     text,
    ADD COLUMN transcript_note    text;

-- An episode's chapters, replaced with its segments.
CREATE TABLE chapters (
    episode_id     text NOT NULL REFERENCES episodes (episode_id) ON DELETE CASCADE,
    position       integer NOT NULL,
    start_seconds  double precision NOT NULL,
    end_seconds    double precision,
    title          text NOT NULL,
    url            text,
    PRIMARY KEY (episode_id, position)
);

-- The title of the chapter a segment falls in, shown on search hits and searched with the segment's words
-- (the text side of hybrid search). A generated column cannot change its expression before Postgres 17, so
-- tsv is made again (with its index: the table is rewritten once).
ALTER TABLE segments ADD COLUMN chapter text;
ALTER TABLE segments DROP COLUMN tsv;
ALTER TABLE segments ADD COLUMN tsv tsvector
    GENERATED ALWAYS AS (to_tsvector('english', text) || to_tsvector('english', coalesce(chapter, ''))) STORED;
CREATE INDEX segments_tsv_idx ON segments USING gin (tsv) WITH (fastupdate = off);  -- as 0003 set it
ANALYZE segments;  -- the text query is sized from tsv's statistics (search/text_query.py)

-- What a call avoided: a transcript read from the publisher saves what the transcriber would have cost.
ALTER TABLE provider_calls ADD COLUMN saved_usd numeric(12, 6) NOT NULL DEFAULT 0;
