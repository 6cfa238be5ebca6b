"""What the read-only servers (`gdr mcp`, `gdr web`) show besides search results: the catalogue with its
speakers, and the speakers. Reads only the tables the reader
role may read (reader.SEARCH_TABLES)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from psycopg.rows import class_row, dict_row

from .database import Database


@dataclass(frozen=True, slots=True)
class EpisodeSummary:
    """One catalogue episode as a listener sees it."""

    episode_id: str
    title: str | None
    published: date | None
    duration_seconds: float | None  # the audio's, else the feed's, else the last chunk's end
    status: str
    speakers: tuple[str, ...]  # by how many chunks each speaks, most first
    segments: int
    audio_url: str | None
    file_name: str | None
    source: str

    def as_json(self) -> dict[str, Any]:
        return {"episode_id": self.episode_id, "title": self.title,
                "published": self.published.isoformat() if self.published else None,
                "duration_seconds": self.duration_seconds, "status": self.status, "speakers": list(self.speakers),
                "segments": self.segments, "source": self.source}


@dataclass(frozen=True, slots=True)
class SpeakerSummary:
    name: str
    episodes: int
    segments: int
    seconds: float  # the length of the chunks they speak most of

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "episodes": self.episodes, "segments": self.segments,
                "seconds": round(self.seconds, 1)}


_EPISODES_SQL = """
SELECT e.episode_id, e.title, e.published,
       coalesce(e.duration_seconds, e.feed_duration_seconds, (SELECT max(s.end_seconds) FROM segments s
                                                              WHERE s.episode_id = e.episode_id)) AS duration_seconds,
       e.status,
       ARRAY(SELECT s.speaker FROM segments s WHERE s.episode_id = e.episode_id
             GROUP BY s.speaker ORDER BY count(*) DESC, s.speaker) AS speakers,
       (SELECT count(*) FROM segments s WHERE s.episode_id = e.episode_id) AS segments, e.audio_url, e.file_name,
       e.source
FROM episodes e
WHERE %(episode)s::text IS NULL OR e.episode_id = %(episode)s
ORDER BY e.published NULLS LAST, e.episode_id"""


def catalogue_version(db: Database) -> tuple:
    """Changes whenever an episode or its stored chunks do: the store replaces an episode's segments in the
    transaction that sets its updated_at, and registering or failing one sets it too (one index-free scan of
    the episodes table, ~0.1 ms at 500 episodes, against ~30 ms for the summaries below at 100k chunks)."""
    with db.connection() as conn:
        return tuple(conn.execute("SELECT count(*), max(updated_at) FROM episodes").fetchone() or ())


def episode_summaries(db: Database, episode_id: str | None = None) -> list[EpisodeSummary]:
    """Every episode (or the one asked for), oldest first."""
    with db.connection() as conn:
        rows = conn.cursor(row_factory=dict_row).execute(_EPISODES_SQL, {"episode": episode_id}).fetchall()
    return [EpisodeSummary(**{**r, "speakers": tuple(r["speakers"])}) for r in rows]


def speaker_summaries(db: Database, episode_id: str | None = None) -> list[SpeakerSummary]:
    """Every speaker named in a stored chunk (of one episode, when given), most chunks first."""
    with db.connection() as conn:
        return conn.cursor(row_factory=class_row(SpeakerSummary)).execute(
            """SELECT speaker AS name, count(DISTINCT episode_id) AS episodes, count(*) AS segments,
                      sum(end_seconds - start_seconds)::float8 AS seconds
               FROM segments WHERE %(episode)s::text IS NULL OR episode_id = %(episode)s
               GROUP BY speaker ORDER BY count(*) DESC, speaker""", {"episode": episode_id}).fetchall()
