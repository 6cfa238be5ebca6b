-- The search's speaker filter (lower(speaker) = name OR LIKE 'name %'): lets a rare speaker's chunks be
-- fetched directly and ranked exactly, instead of walking the HNSW graph until enough of them pass.
CREATE INDEX segments_speaker_idx ON segments (lower(speaker) text_pattern_ops);

-- Without fastupdate, new segments go straight into the full-text index instead of a pending list that
-- every text search scans in full until a vacuum merges it (at 100k chunks: up to ~4 MB, ~8 ms a search).
-- Inserting costs a little more (~50 us a segment).
ALTER INDEX segments_tsv_idx SET (fastupdate = off);
SELECT gin_clean_pending_list('segments_tsv_idx'::regclass);
