"""How a run reports each episode to whoever watches it (the `gdr ingest` display, the run's progress
artifact): one typed event, with the run's own status vocabulary. The database's is `EpisodeState`
(storage/episodes.py): an episode is pending, processed or failed between runs; within a run it is queued,
running, then processed, failed, busy or skipped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class EpisodeStatus(StrEnum):
    """Where an episode is in a run."""

    QUEUED = "queued"
    RUNNING = "running"
    PROCESSED = "processed"
    BUSY = "busy"  # another run processed it (this one waited for it): not a failure
    FAILED = "failed"
    SKIPPED = "skipped"  # not started: the run stopped first

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({EpisodeStatus.PROCESSED, EpisodeStatus.BUSY, EpisodeStatus.FAILED, EpisodeStatus.SKIPPED})


@dataclass(slots=True)
class EpisodeSummary:
    """How an episode ended in a run: one row of the run's `ingest-summary` artifact and of `gdr ingest`'s
    summary table, what a person looks for first, first."""

    episode: str
    status: EpisodeStatus
    error: str = ""
    title: str = ""
    workers: str = ""  # every worker that took it in this run, oldest first; "(died)" after one that went away
    processed_by: str = ""
    seconds: float = 0.0
    segments: int = 0
    audio_minutes: float = 0.0
    tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One report about one episode: its status, and what is known now (None: nothing new about it)."""

    episode_id: str
    status: EpisodeStatus
    stage: str | None = None  # the stage it starts (ingest/sequence.py STAGE_NAMES)
    audio_done: float | None = None  # seconds of audio transcribed so far, of audio_total
    audio_total: float | None = None
    transcript: str | None = None  # who transcribes it: a provider, or the publisher's transcript
    transcript_note: str | None = None  # why the publisher's transcript was not read
    summary: EpisodeSummary | None = None  # how it ended (and its title when queued)


ProgressCallback = Callable[[ProgressEvent], None]


def ignore_progress(event: ProgressEvent) -> None:
    return None
