"""The archive as the read-only servers see it: the library's search, the catalogue, the speakers, a transcript
around a moment and an episode's audio, with every bad input refused by an ArchiveError that names it.

It reads as the reader role (storage/reader.reader_url): SELECT only, read-only transactions, so
nothing asked of `gdr mcp` or `gdr web` can write.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import class_row

from ..errors import DatabaseUnavailableError, GdrError
from ..search import Hit, Searcher
from ..search.types import Segment, format_time
from ..settings import Settings
from ..storage.browse import (
    EpisodeSummary,
    SpeakerSummary,
    catalogue_version,
    episode_summaries,
    speaker_summaries,
)
from ..storage.database import Database
from ..storage.embedded import first_line
from ..storage.episodes import EpisodeState
from ..storage.reader import reader_url

MAX_K = 50  # results one search may ask for: more is never a citation, only a slower answer
MAX_TRANSCRIPT_SECONDS = 900.0  # one transcript call: 15 minutes of conversation is already ~2,500 words
DEFAULT_TRANSCRIPT_SECONDS = 120.0
STATUSES = tuple(EpisodeState)
SERVER_POOL_SIZE = 4  # connections of one server process: requests are short, a few at a time


class ArchiveError(GdrError):
    """A request the archive cannot answer as asked; the message says what was wrong."""


@dataclass(frozen=True, slots=True)
class Question:
    """The question a credited reply answers (search/replies.py), shown above the reply."""

    speaker: str
    start: float
    end: float
    text: str

    def as_json(self) -> dict[str, Any]:
        return {"speaker": self.speaker, "start": self.start, "end": self.end, "text": self.text}


@dataclass(frozen=True, slots=True)
class Answer:
    """One search result as the servers give it: the cited chunk, where it is, and its question if credited."""

    rank: int
    relevance: float
    episode_id: str
    title: str
    published: date | None
    speaker: str
    start: float  # the cited chunk's
    end: float
    link: str | None  # the library's deep link (audio_url#t=, or the local file#t=)
    text: str
    question: Question | None

    @property
    def time_range(self) -> str:
        return f"{format_time(self.start)}–{format_time(self.end)}"

    def as_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "relevance": round(self.relevance, 4), "episode_id": self.episode_id,
                "title": self.title, "published": self.published.isoformat() if self.published else None,
                "speaker": self.speaker, "start": self.start, "end": self.end, "time": self.time_range,
                "link": self.link, "text": self.text,
                "question": self.question.as_json() if self.question else None}


@dataclass(frozen=True, slots=True)
class Answers:
    answers: list[Answer]
    notice: str | None  # why there are none, when there are none


@dataclass(frozen=True, slots=True)
class Transcript:
    episode: EpisodeSummary
    start: float
    end: float
    turns: list[Segment]  # the library's stored-chunk row, as search results hold them

    def as_json(self) -> dict[str, Any]:
        return {"episode_id": self.episode.episode_id, "title": self.episode.title, "start": self.start,
                "end": self.end, "turns": [t.as_json() for t in self.turns]}


@dataclass(frozen=True, slots=True)
class _Catalogue:
    version: tuple
    episodes: list[EpisodeSummary]
    speakers: list[SpeakerSummary]


def answer_of(hit: Hit) -> Answer:
    """A library hit (searched with context >= 1) as an Answer: its cited chunk, and the question a credited reply
    answers, which is the chunk just before it and so inside its window."""
    cited = hit.cited
    question = None
    if hit.reply_to is not None:
        asked: Segment | None = next((s for s in hit.segments if s.position == hit.reply_to.position), None)
        if asked is not None:
            question = Question(asked.speaker, asked.start, asked.end, asked.text)
    return Answer(hit.rank, hit.relevance, hit.episode_id, hit.title, hit.published, cited.speaker, cited.start,
                  cited.end, hit.link, cited.text, question)


class Archive:
    """Searches and browses one database as the reader role; thread-safe (the pool and the searcher are)."""

    def __init__(self, settings: Settings, db: Database):
        self.settings = settings
        self.db = db
        self.searcher = Searcher(settings, db)
        self._cached: _Catalogue | None = None

    def search(self, query: str, k: int = 5, *, speaker: str | None = None, episode: str | None = None,
               since: str | None = None, until: str | None = None) -> Answers:
        """The library's hybrid search (`gdr search`'s defaults: one chunk of context, which holds a credited
        reply's question)."""
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ArchiveError(f"k must be between 1 and {MAX_K} (got {k})")
        if episode is not None:
            self.episode(episode)  # an unknown id is named, with the known ones
        results = self.searcher.search(query, k, speaker=speaker or None, episode=episode, since=since or None,
                                       until=until or None, context=1)
        return Answers([answer_of(h) for h in results], results.notice)

    def _catalogue(self) -> _Catalogue:
        """The episode and speaker lists, summarised again only when catalogue_version changes: the page shows
        both with every search, and summarising 100k chunks costs more than the search itself."""
        version = catalogue_version(self.db)
        cached = self._cached
        if cached is None or cached.version != version:
            cached = self._cached = _Catalogue(version, episode_summaries(self.db), speaker_summaries(self.db))
        return cached

    def episodes(self, status: str | None = None) -> list[EpisodeSummary]:
        """The catalogue, oldest first; only the episodes of one status when given."""
        if status is not None and status not in STATUSES:
            raise ArchiveError(f"unknown status {status!r} (use one of: {', '.join(STATUSES)})")
        return [e for e in self._catalogue().episodes if status is None or e.status == status]

    def speakers(self, episode: str | None = None) -> list[SpeakerSummary]:
        """Everyone heard, or everyone heard in one episode."""
        if episode is None:
            return list(self._catalogue().speakers)
        return speaker_summaries(self.db, self.episode(episode).episode_id)

    def episode(self, episode_id: str) -> EpisodeSummary:
        """The episode, or an ArchiveError naming the id and the known ones."""
        episode_id = str(episode_id).strip()
        if not episode_id:
            raise ArchiveError("the episode id is empty")
        found = episode_summaries(self.db, episode_id)
        if not found:
            known = [e.episode_id for e in self.episodes()]
            listing = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
            raise ArchiveError(f"episode {episode_id!r} does not exist" + (f" (known episodes: {listing})" if known else ""))
        return found[0]

    def transcript(self, episode_id: str, start: float, end: float | None = None) -> Transcript:
        """The speaker-attributed chunks of [start, end] seconds (default: DEFAULT_TRANSCRIPT_SECONDS from start)."""
        episode = self.episode(episode_id)
        end = start + DEFAULT_TRANSCRIPT_SECONDS if end is None else end
        if start < 0:
            raise ArchiveError(f"start must be 0 or more seconds (got {start:g})")
        if end <= start:
            raise ArchiveError(f"end ({end:g} s) must be after start ({start:g} s)")
        if end - start > MAX_TRANSCRIPT_SECONDS:
            raise ArchiveError(f"at most {MAX_TRANSCRIPT_SECONDS:g} seconds at a time (asked {end - start:g})")
        if not episode.segments:
            raise ArchiveError(f"episode {episode.episode_id!r} has no transcript yet (status {episode.status})")
        length = episode.duration_seconds or 0.0
        if start >= length:
            raise ArchiveError(f"start {start:g} s is outside episode {episode.episode_id!r}, which is {length:.0f} s long "
                               f"({format_time(length)})")
        with self.db.connection() as conn:
            turns = conn.cursor(row_factory=class_row(Segment)).execute(
                """SELECT position, speaker, start_seconds AS start, end_seconds AS "end", text FROM segments
                   WHERE episode_id = %s AND end_seconds > %s AND start_seconds < %s ORDER BY position""",
                (episode.episode_id, start, end)).fetchall()
        return Transcript(episode, start, min(end, length), turns)

    def audio_file(self, episode: EpisodeSummary) -> Path | None:
        """The local audio of a catalogue episode, only if it is a file inside AUDIO_DIR (a file_name with `..`
        or a symlink out of the folder is not served)."""
        if episode.source != "catalogue" or not episode.file_name:
            return None
        root = self.settings.audio_dir.resolve()
        path = (root / episode.file_name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path


@contextmanager
def opened_archive(settings: Settings | None = None) -> Iterator[Archive]:
    """The settings' database opened as the reader role for this block (reader_url sets the role up if missing)."""
    settings = settings or Settings()
    url = reader_url(settings)
    db = Database(url, max_size=SERVER_POOL_SIZE, timeout=settings.db_pool_timeout)
    try:
        db.open()
    except psycopg.OperationalError as exc:  # e.g. the role cannot log in here (an external server's pg_hba)
        raise DatabaseUnavailableError(f"cannot connect to Postgres as the reader role: {first_line(exc)}") from None
    try:
        yield Archive(settings, db)
    finally:
        db.close()
