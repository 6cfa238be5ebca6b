"""The user's chat server's statement, verbatim (issue 17's contract): what tests and the bench run against
the `chat` views. `{where}` is empty, or THRESHOLD for its similarity-threshold form."""

QUERY = """SELECT s.name, ts.text, e.episode_number, e.title, e.date_published,
       1 - (ts.embedding <=> %s::vector) AS similarity
FROM transcript_segments ts
JOIN episodes e ON ts.episode_id = e.episode_number
JOIN speakers s ON ts.speaker_id = s.id
{where}ORDER BY similarity DESC
LIMIT %s"""
THRESHOLD = "WHERE 1 - (ts.embedding <=> %s::vector) >= %s\n"
