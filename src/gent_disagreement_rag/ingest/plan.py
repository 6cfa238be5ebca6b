"""Which episodes a run processes: new, failed, or whose audio changed (or the named ones; all with
force), longest first. Planning only reads; registering the catalogue and the feeds is a stage of its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..files import sha256_file
from ..settings import Settings
from ..sources.catalogue import CatalogueEntry, catalogue_entries
from ..storage import episodes
from ..storage.database import Database


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

    @property
    def needs_download(self) -> bool:
        return self.audio_sha256 is None


@dataclass(slots=True)
class EpisodePlan:
    """What a run will do: jobs to run (longest first), episodes that cannot start (with the reason),
    and those already up to date."""

    jobs: list[EpisodeJob] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)
    up_to_date: list[str] = field(default_factory=list)


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
    """A feed episode's audio is its downloaded enclosure; until it is there, the job downloads it first."""
    path = (settings.audio_dir / (row.file_name or row.episode_id)).resolve()
    return EpisodeJob(
        episode_id=row.episode_id,
        title=row.title or row.episode_id,
        stem=row.episode_id,
        audio_path=path,
        audio_sha256=sha256_file(path) if path.is_file() else None,
        speakers_map=row.speakers_map,
        audio_url=row.audio_url,
        audio_size=row.enclosure_length,
    )


def plan_episodes(
    settings: Settings, db: Database, episode_ids: list[str] | None = None, force: bool = False
) -> EpisodePlan:
    """The plan for the catalogue's entries and the feed episodes registered by `discover`.

    Reads only. A malformed catalogue raises before any work; a missing audio file only affects its
    episode. An entry the database does not know yet is new.
    """
    entries = catalogue_entries(settings)
    rows = episodes.list_episodes(db)
    known = {row.episode_id: row for row in rows}
    candidates: dict[str, Callable[[], EpisodeJob]] = {e.episode_id: (lambda e=e: _job_for(settings, e)) for e in entries}
    candidates |= {r.episode_id: (lambda r=r: _feed_job_for(settings, r)) for r in rows if r.source == "feed"}
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
        current = row is not None and row.status == "processed" and row.processed_sha256 == job.audio_sha256
        if current and not force and not episode_ids:
            plan.up_to_date.append(job.episode_id)
        else:
            plan.jobs.append(job)
    plan.jobs.sort(key=_audio_bytes, reverse=True)
    return plan


def _audio_bytes(job: EpisodeJob) -> int:
    """How long an episode will take, by proxy: its audio's size (the feed's declared size until downloaded).

    Longest first, so that a pool of workers finishes together: in catalogue order the last long
    episode can start when the others are nearly done (BENCHMARKS.md section 1).
    """
    return job.audio_path.stat().st_size if job.audio_path.is_file() else (job.audio_size or 0)
