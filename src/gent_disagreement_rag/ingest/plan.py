"""Which episodes a run processes: new, failed, whose audio changed, or stale (stored segments or vectors
made with other settings than today's: chunker, speaker names, embedding model), or the named ones (all
with force), longest first. Planning only reads; registering the catalogue and the feeds is a stage of
its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import sha256_file
from ..providers.registry import provider_registry
from ..settings import Settings, TranscriptPolicy
from ..sources.catalogue import CatalogueEntry, catalogue_entries
from ..sources.publisher import TranscriptChoice, TranscriptLink, choose_transcript
from ..storage import episodes
from ..storage.database import Database
from ..storage.episodes import EpisodeState
from .config import EmbedConfig, FormatConfig


@dataclass(frozen=True, slots=True)
class EpisodeJob:
    """Everything the stages need to know about one episode; small, picklable and JSON-able."""

    episode_id: str
    title: str
    stem: str
    audio_path: Path
    audio_sha256: str | None  # None: a feed episode whose audio is still to be downloaded from audio_url
    speakers_map: dict[str, str] = field(default_factory=dict)
    audio_url: str | None = None
    audio_size: int | None = None  # the size the feed declares
    # The publisher's files (feed episodes): the transcript to read instead of transcribing (FEED_TRANSCRIPTS),
    # what to know about it or why none is read (`transcript_note`: an HTML one's times are estimated, an
    # unknown type is not read), and the chapters. The download stage fetches them into GDR_HOME/publisher
    # under their content's hash (`transcript_file`, `chapters_file`); a transcript that cannot be used is
    # dropped there, with the reason in `transcript_note`, and the episode is transcribed.
    transcript_url: str | None = None
    transcript_type: str | None = None
    transcript_note: str | None = None
    chapters_url: str | None = None
    publisher_fetched: bool = False
    transcript_file: Path | None = None
    chapters_file: Path | None = None

    @property
    def needs_download(self) -> bool:
        return self.audio_sha256 is None

    @property
    def needs_publisher_files(self) -> bool:
        return bool(self.transcript_url or self.chapters_url) and not self.publisher_fetched

    def as_json(self) -> dict[str, Any]:
        """The job as a flow or task parameter: plain JSON, readable in the Prefect UI."""
        return {"episode_id": self.episode_id, "title": self.title, "stem": self.stem, "audio_path": str(self.audio_path),
                "audio_sha256": self.audio_sha256, "speakers_map": dict(self.speakers_map), "audio_url": self.audio_url,
                "audio_size": self.audio_size, "transcript_url": self.transcript_url,
                "transcript_type": self.transcript_type, "transcript_note": self.transcript_note,
                "chapters_url": self.chapters_url, "publisher_fetched": self.publisher_fetched,
                "transcript_file": str(self.transcript_file) if self.transcript_file else None,
                "chapters_file": str(self.chapters_file) if self.chapters_file else None}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> EpisodeJob:
        paths = {name: Path(value[name]) for name in ("transcript_file", "chapters_file") if value.get(name)}
        return cls(**{**value, "audio_path": Path(value["audio_path"]), **paths})


@dataclass(slots=True)
class EpisodePlan:
    """What a run will do: jobs to run (longest first), episodes that cannot start (with the reason),
    and those already up to date."""

    jobs: list[EpisodeJob] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)
    up_to_date: list[str] = field(default_factory=list)
    stale: dict[str, str] = field(default_factory=dict)  # jobs that run because the settings changed, and why
    skipped: dict[str, str] = field(default_factory=dict)  # not run although not up to date, and why (undecodable audio)


def stale_reason(settings: Settings, row: episodes.EpisodeRow, speakers_map: dict[str, str]) -> str | None:
    """Why a processed episode's stored segments or vectors are not what the settings would make now
    (None: they are). An episode processed before segments_config was recorded is judged by its vectors
    only: re-chunking it could cost a transcription if the stage cache is gone. The exception is text an older
    parser read from a local transcript: made again, it costs no more than CPU time."""
    if row.status is not EpisodeState.PROCESSED:
        return None
    reasons = FormatConfig.from_settings(settings, speakers_map).stale_reasons(row.segments_config, row.transcribed_by)
    reasons += _transcript_stale(settings, row)
    embed = EmbedConfig(str(provider_registry(settings).settings_model()))
    reasons += embed.stale_reasons(row.model_ids, bool(row.segments))
    return "; ".join(reasons) or None


def undecodable_reason(settings: Settings, row: episodes.EpisodeRow, audio_sha256: str | None) -> str | None:
    """Why an episode is not tried again: the transcriber the settings choose could not decode this very audio
    (None: it may work now, or it was never tried)."""
    marker = row.undecodable_audio
    if (marker is None or audio_sha256 is None or marker.get("audio_sha256") != audio_sha256
            or marker.get("transcriber") != settings.resolved_transcriber):
        return None
    return (f"its audio could not be decoded by the {settings.resolved_transcriber} transcriber and has not changed "
            "since: skipped until the file or TRANSCRIBER changes (--force tries again)")


def undecodable_note(settings: Settings, row: episodes.EpisodeRow) -> str | None:
    """What `gdr status` says of an episode whose audio the settings' transcriber could not decode (reads no file)."""
    marker = row.undecodable_audio
    if row.status is not EpisodeState.FAILED or marker is None or marker.get("transcriber") != settings.resolved_transcriber:
        return None
    return "not retried while its audio file stays the same (--force tries again)"


def wanted_transcript(settings: Settings, links: list[dict[str, Any]]) -> TranscriptChoice:
    """The publisher's transcript FEED_TRANSCRIPTS wants read, from the feed's links as stored."""
    if settings.feed_transcripts is TranscriptPolicy.TRANSCRIBE:
        return TranscriptChoice(None)
    return choose_transcript([TranscriptLink.from_json(link) for link in links])


def _transcript_stale(settings: Settings, row: episodes.EpisodeRow) -> list[str]:
    """A feed episode read from a transcript the settings or the feed no longer offer, or transcribed while the
    feed now links one it has not tried. Episodes processed before the source was recorded are left alone:
    their transcription is paid for, and `gdr ingest -e ID` reads the publisher's when wanted."""
    if row.source != "feed" or row.transcript_source is None:
        return []
    link = wanted_transcript(settings, row.transcript_links).link
    if row.transcript_source == episodes.TranscriptSource.PUBLISHER and link is None:
        return [f"read from the publisher's transcript; FEED_TRANSCRIPTS={settings.feed_transcripts} "
                "and the feed now want it transcribed"]
    if link is not None and link.url != row.transcript_url:
        return [f"the feed links a transcript not read yet ({link.type})"]
    return []


def _job_for(settings: Settings, entry: CatalogueEntry) -> EpisodeJob:
    where = f"{settings.episodes_file}: episode {entry.episode_id}: field 'file_name'"
    if not entry.file_name:
        raise ConfigError(f"{where}: no audio file")
    path = settings.audio_dir / entry.file_name
    if not path.is_file():
        raise ConfigError(f"{where}: audio file not found: {path}")
    if path.stat().st_size == 0:  # an interrupted copy: uploading it would only earn a 400
        raise ConfigError(f"{where}: audio file is empty (0 bytes): {path}")
    return EpisodeJob(
        episode_id=entry.episode_id,
        title=entry.display_title,
        stem=Path(entry.file_name).stem,
        audio_path=path.resolve(),
        audio_sha256=sha256_file(path),
        speakers_map=entry.speakers_map,
    )


def _feed_job_for(settings: Settings, row: episodes.EpisodeRow) -> EpisodeJob:
    """A feed episode's audio is its downloaded enclosure; until it is there, the job downloads it first.
    Enclosures downloaded into AUDIO_DIR before FEED_AUDIO_DIR existed are used where they are."""
    name = row.file_name or row.episode_id
    path, legacy = settings.feed_audio_path / name, (settings.audio_dir / name).resolve()
    if not path.is_file() and legacy.is_file():
        path = legacy
    choice = wanted_transcript(settings, row.transcript_links)
    return EpisodeJob(
        episode_id=row.episode_id,
        title=row.title or row.episode_id,
        stem=row.episode_id,
        audio_path=path,
        audio_sha256=sha256_file(path) if path.is_file() else None,
        speakers_map=row.speakers_map,
        audio_url=row.audio_url,
        audio_size=row.enclosure_length,
        transcript_url=choice.link.url if choice.link else None,
        transcript_type=choice.link.type if choice.link else None,
        transcript_note=choice.note,
        chapters_url=row.chapters_url,
    )


def plan_episodes(
    settings: Settings, db: Database, episode_ids: list[str] | None = None, force: bool = False
) -> EpisodePlan:
    """The plan for the catalogue's entries and the feed episodes registered by `discover`.

    Reads only. A malformed catalogue raises before any work; a missing audio file only affects its
    episode. An entry the database does not know yet is new. The embedding model wanted is the settings'
    (the registry's settings_model), so planning builds no provider.
    """
    entries = catalogue_entries(settings)
    rows = episodes.list_episodes(db)
    known = {row.episode_id: row for row in rows}
    candidates: dict[str, Callable[[], EpisodeJob]] = {e.episode_id: partial(_job_for, settings, e) for e in entries}
    candidates |= {r.episode_id: partial(_feed_job_for, settings, r) for r in rows if r.source == "feed"}
    if episode_ids:
        unknown = sorted(set(episode_ids) - candidates.keys())
        if unknown:
            raise ConfigError(
                f"no episode with episode_id {', '.join(unknown)} in {settings.episodes_file} or the feeds' episodes"
            )
        candidates = {e: make_job for e, make_job in candidates.items() if e in set(episode_ids)}
    plan = EpisodePlan()
    for episode_id, make_job in candidates.items():
        try:
            job = make_job()
        except ConfigError as exc:
            plan.invalid[episode_id] = str(exc)
            continue
        row = known.get(episode_id)
        current = row is not None and row.status is EpisodeState.PROCESSED and row.processed_sha256 == job.audio_sha256
        stale = stale_reason(settings, row, job.speakers_map) if row is not None and current else None
        if current and not stale and not force:  # named or not: --force runs an up-to-date episode again
            plan.up_to_date.append(job.episode_id)
        elif not force and row is not None and (why := undecodable_reason(settings, row, job.audio_sha256)):
            plan.skipped[episode_id] = why
        else:
            plan.jobs.append(job)
            if stale:
                plan.stale[episode_id] = stale
    plan.jobs.sort(key=_audio_bytes, reverse=True)
    return plan


def _audio_bytes(job: EpisodeJob) -> int:
    """How long an episode will take, by proxy: its audio's size (the feed's declared size until downloaded).

    Longest first, so that a pool of workers finishes together: in catalogue order the last long
    episode can start when the others are nearly done (BENCHMARKS.md, "Parallel scaling").
    """
    return job.audio_path.stat().st_size if job.audio_path.is_file() else (job.audio_size or 0)
