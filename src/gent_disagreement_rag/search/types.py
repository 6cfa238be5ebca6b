"""What a search returns (Hit, SearchResults) and what it is asked (Mode, filters), without any I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import GdrError
from ..storage.vector_index import IndexKind


class SearchError(GdrError):
    """The search cannot run: empty query, unknown episode, nothing ingested, model unavailable."""


class Mode(str, Enum):
    vector = "vector"
    text = "text"
    hybrid = "hybrid"


# Hybrid: never behind on hit@3 and the best MRR in every configuration measured, and it keeps the rare
# names and terms that vectors blur (BENCHMARKS.md "Design figures").
DEFAULT_MODE = Mode.hybrid

@dataclass(frozen=True, slots=True)
class Segment:
    """One stored chunk of a result (the hit itself or a neighbour)."""

    position: int
    speaker: str
    start: float
    end: float
    text: str
    chapter: str | None = None  # the title of the publisher's chapter it falls in

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "speaker": self.speaker, "start": self.start, "end": self.end, "text": self.text,
                "chapter": self.chapter}


@dataclass(frozen=True, slots=True)
class Credit:
    """The question a reply answers, whose match ranked the reply (replies.py), with its raw scores."""

    position: int
    vector_score: float | None
    text_score: float | None

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "vector_score": self.vector_score, "text_score": self.text_score}


@dataclass(frozen=True, slots=True)
class Hit:
    """One result: a matching chunk, or a window of chunks around one or more matching chunks."""

    rank: int  # 1-based
    score: float  # the ranking value of the mode: cosine similarity (vector), ts_rank_cd (text) or RRF (hybrid)
    episode_id: str
    title: str
    published: date | None
    speaker: str  # speaker of the best matching chunk
    start: float  # seconds, start of the result (the window's first chunk)
    end: float  # seconds, end of the result
    text: str  # the chunk's text; for a window, one "Speaker: text" line per chunk
    link: str | None  # audio_url#t=SECONDS, else AUDIO_DIR/file_name#t=SECONDS, at the cited chunk's start
    position: int  # position of the best matching chunk
    positions: tuple[int, ...]  # every chunk in the result, in order
    matched_positions: tuple[int, ...]  # the matching chunks merged into this result, best first
    segments: tuple[Segment, ...]  # every chunk in the result, in order
    relevance: float = 0.0  # in [0, 1]: the estimated chance it answers the query (see relevance.py)
    rrf: float | None = None  # the reciprocal rank fusion value (hybrid; equals score there)
    vector_score: float | None = None  # cosine similarity of the best chunk (vector/hybrid, text-only hits too)
    vector_rank: int | None = None  # its rank on the vector side (None: not among the candidates)
    text_score: float | None = None  # ts_rank_cd of the best chunk (text/hybrid)
    text_rank: int | None = None
    reply_to: Credit | None = None  # set when the hit ranks as the reply to a matching question
    chapter: str | None = None  # the publisher's chapter the cited chunk falls in (feeds with podcast:chapters)

    @property
    def speakers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.speaker for s in self.segments))

    @property
    def time_range(self) -> str:
        return f"{format_time(self.start)}–{format_time(self.end)}"

    @property
    def cited(self) -> Segment:
        """The best matching chunk: the moment to cite (the rest of `segments` is its context)."""
        return next(s for s in self.segments if s.position == self.position)

    @property
    def cited_range(self) -> str:
        return f"{format_time(self.cited.start)}–{format_time(self.cited.end)}"

    def as_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "relevance": self.relevance,
            "score": self.score,
            "episode_id": self.episode_id,
            "title": self.title,
            "published": self.published.isoformat() if self.published else None,
            "speaker": self.speaker,
            "speakers": list(self.speakers),
            "chapter": self.chapter,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "link": self.link,
            "position": self.position,
            "positions": list(self.positions),
            "matched_positions": list(self.matched_positions),
            "rrf": self.rrf,
            "vector_score": self.vector_score,
            "vector_rank": self.vector_rank,
            "text_score": self.text_score,
            "text_rank": self.text_rank,
            "reply_to": self.reply_to.as_json() if self.reply_to else None,
            "segments": [s.as_json() for s in self.segments],
        }


class SearchResults(list[Hit]):
    """The hits, plus how they were found and, when empty, why (`notice`)."""

    def __init__(self, hits: Sequence[Hit] = (), *, mode: Mode = DEFAULT_MODE, model_id: str | None = None,
                 notice: str | None = None, exact_fallback: bool = False, relevance_basis: str = ""):
        super().__init__(hits)
        self.mode = mode
        self.model_id = model_id  # the embedding model searched (None in text mode)
        self.notice = notice  # why there are no results, when there are none
        self.exact_fallback = exact_fallback  # True when a filter starved the HNSW scan and an exact scan ran
        self.relevance_basis = relevance_basis  # what Hit.relevance is computed from (relevance.py)


@dataclass(frozen=True, slots=True)
class StoredModel:
    model_id: str
    provider: str
    model: str
    dimensions: int
    index_kind: IndexKind  # which cast the model's HNSW index is over (storage/vector_index.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index_kind", IndexKind(self.index_kind))  # read from the database as text


class FilterShape(NamedTuple):
    episode: bool
    speaker: bool
    since: bool
    until: bool = False


@dataclass(frozen=True, slots=True)
class Filters:
    episode: str | None = None
    speaker: str | None = None
    since: date | None = None
    until: date | None = None

    @property
    def any(self) -> bool:
        return self.shape != FilterShape(False, False, False, False)

    @property
    def shape(self) -> FilterShape:
        """Which filters are set: all the SQL text depends on (the values are parameters)."""
        return FilterShape(self.episode is not None, self.speaker is not None, self.since is not None,
                           self.until is not None)

    def params(self) -> dict[str, Any]:
        name = self.speaker.lower() if self.speaker else None
        return {"episode": self.episode, "since": self.since, "until": self.until, "speaker": name,
                "speaker_prefix": like_escape(name) + " %" if name else None}


def format_time(seconds: float) -> str:
    total = max(0, int(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def deep_link(audio_url: str | None, file_name: str | None, audio_dir: Path, seconds: float) -> str | None:
    """A link that plays the episode from `seconds` (media-fragment `#t=`, whole seconds, rounded down)."""
    t = max(0, math.floor(seconds))
    if audio_url:
        return f"{audio_url.split('#', 1)[0]}#t={t}"
    if file_name:
        return f"{audio_dir / file_name}#t={t}"
    return None


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def parse_since(since: date | datetime | str | None, name: str = "since") -> date | None:
    """A date filter (`since`, or `until` by `name`) from a date, a datetime or YYYY-MM-DD."""
    if since is None or (isinstance(since, str) and not since.strip()):
        return None
    if isinstance(since, datetime):
        return since.date()
    if isinstance(since, date):
        return since
    try:
        return date.fromisoformat(since.strip())
    except ValueError:
        raise SearchError(f"{name}={since!r} is not a date (use YYYY-MM-DD)") from None


def parse_mode(mode: Mode | str) -> Mode:
    try:
        return Mode(mode.value if isinstance(mode, Mode) else str(mode).lower())
    except ValueError:
        raise SearchError(f"unknown search mode {mode!r} (use vector, text or hybrid)") from None
