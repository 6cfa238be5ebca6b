-- The read interface of the user's chat server (README: "Using the knowledge base from another application").
-- It runs, unchanged, `... FROM transcript_segments ts JOIN episodes e ON ts.episode_id = e.episode_number
-- JOIN speakers s ON ts.speaker_id = s.id ...`. Our own `episodes` table has other columns, so the three
-- relations are views in a schema of their own, `chat`; the reader role that `gdr db env` creates has
-- search_path = chat, public, so for it `episodes` is chat.episodes. Our tables keep their columns; the
-- only additions are two id tables that keep numbers stable across reruns, filled by triggers.

CREATE SCHEMA chat;

-- Speaker ids: one per name, assigned the first time a segment names the speaker and never reused, so an
-- episode rerun (its segments deleted and copied again) keeps every speaker's id. The store registers an
-- episode's names just before its transaction (chat_access.register_speakers); the trigger covers any other writer.
CREATE TABLE chat.speaker_ids (
    id    integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name  text NOT NULL UNIQUE
);

-- A number reserved for every episode when it is registered, used when it has no number of its own (a
-- non-numeric catalogue id, a feed item without itunes:episode, or a number another episode holds).
-- Reserved numbers start at 1,000,001 so they never collide with a catalogue's or a feed's own.
CREATE TABLE chat.episode_numbers (
    episode_id      text PRIMARY KEY REFERENCES public.episodes (episode_id) ON DELETE CASCADE,
    reserved_number integer NOT NULL UNIQUE
);
CREATE SEQUENCE chat.reserved_episode_number START 1000001 OWNED BY chat.episode_numbers.reserved_number;

CREATE FUNCTION chat.register_speakers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- In name order: two writers adding the same new names wait for each other, never deadlock.
    INSERT INTO chat.speaker_ids (name)
    SELECT DISTINCT speaker FROM new_segments ORDER BY speaker
    ON CONFLICT (name) DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER segments_register_speakers AFTER INSERT ON public.segments
    REFERENCING NEW TABLE AS new_segments FOR EACH STATEMENT EXECUTE FUNCTION chat.register_speakers();

CREATE FUNCTION chat.reserve_episode_numbers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chat.episode_numbers (episode_id, reserved_number)
    SELECT episode_id, nextval('chat.reserved_episode_number') FROM new_episodes ORDER BY episode_id
    ON CONFLICT (episode_id) DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER episodes_reserve_numbers AFTER INSERT ON public.episodes
    REFERENCING NEW TABLE AS new_episodes FOR EACH STATEMENT EXECUTE FUNCTION chat.reserve_episode_numbers();

INSERT INTO chat.speaker_ids (name) SELECT DISTINCT speaker FROM public.segments ORDER BY speaker;
INSERT INTO chat.episode_numbers (episode_id, reserved_number)
SELECT episode_id, nextval('chat.reserved_episode_number') FROM public.episodes ORDER BY created_at, episode_id;

-- The number each episode is shown under, unique: a catalogue id that is a number (written without leading
-- zeros) is its number; a feed item's itunes:episode is its number unless a catalogue episode or an earlier
-- registered feed item has it (feeds restart numbering each season); anything else shows its reserved number.
CREATE VIEW chat.episode_number_of AS
WITH own AS (
    SELECT e.episode_id, n.reserved_number, e.source,
           CASE WHEN e.source = 'catalogue' AND e.episode_id ~ '^(0|[1-9][0-9]{0,5})$' THEN e.episode_id::integer
                WHEN e.source = 'feed' AND e.episode_number < 1000001 THEN e.episode_number END AS own_number
    FROM public.episodes e JOIN chat.episode_numbers n USING (episode_id)
)
SELECT episode_id,
       CASE WHEN own_number IS NOT NULL
                 AND row_number() OVER (PARTITION BY own_number ORDER BY source = 'feed', reserved_number) = 1
            THEN own_number ELSE reserved_number END AS episode_number
FROM own;

CREATE VIEW chat.episodes AS
SELECT n.episode_number, e.title, e.published AS date_published, e.episode_id AS gdr_episode_id, e.source,
       e.audio_url
FROM public.episodes e JOIN chat.episode_number_of n USING (episode_id);

CREATE VIEW chat.speakers AS
SELECT id, name FROM chat.speaker_ids;

-- One row per stored chunk that has a text-embedding-3-small (1536-d) vector: that is the model the chat
-- server embeds its questions with. Chunks of an episode embedded only by the local model are left out
-- rather than shown with a NULL embedding: `ORDER BY similarity DESC` puts NULLs first.
-- `embedding` is the expression of that model's partial HNSW index (store.ensure_model).
CREATE VIEW chat.transcript_segments AS
SELECT n.episode_number AS episode_id, sp.id AS speaker_id, s.text,
       v.embedding::vector(1536) AS embedding,
       s.position, s.start_seconds, s.end_seconds, s.episode_id AS gdr_episode_id
FROM public.segments s
JOIN public.embeddings v
  ON v.model_id = 'openai/text-embedding-3-small@1536' AND v.episode_id = s.episode_id AND v.position = s.position
JOIN chat.episode_number_of n ON n.episode_id = s.episode_id
JOIN chat.speaker_ids sp ON sp.name = s.speaker;
