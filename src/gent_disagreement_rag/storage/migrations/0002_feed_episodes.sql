-- Feed episodes: what the feed says about the episode and its enclosure, and the size of the downloaded file.
ALTER TABLE episodes
    ADD COLUMN episode_number         integer,
    ADD COLUMN enclosure_length       bigint,
    ADD COLUMN feed_duration_seconds  double precision,
    ADD COLUMN audio_size             bigint;
