"""One episode's stages as plain functions: no Prefect here.

The flows in `flows/` wrap each of these in a cached, retryable task; from a Python shell they can
be called directly:

    >>> s = Settings(); db = Database.from_settings(s)
    >>> [job] = plan_episodes(s, db, episode_ids=["1"], force=True).jobs
    >>> result = transcribe(s, job); episode = format_episode(s, job, result.transcript)
    >>> export(s, job, result.raw, episode); batch = embed(s, episode.chunks); store_episode(s, db, job, episode, batch)

Each stage also has a cache key built from what determines its output (audio content hash, provider,
model, options, parameters, stage version): the orchestration uses them so that a rerun pays for nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import store
from .catalogue import CatalogueEntry, catalogue_entries
from .chunking import Chunk, ChunkerConfig, chunk_transcript
from .database import Database
from .embedders import Embedder, EmbeddingBatch, make_embedder
from .errors import ConfigError, QualityGateError
from .exports import export_episode
from .feeds import download_enclosure, parse_feed
from .quality import QualityReport, check_transcript
from .settings import Settings
from .transcribers import Transcriber, make_transcriber
from .transcript import Transcript, TranscriptionResult

TRANSCRIBE_VERSION = "1"
FORMAT_VERSION = "1"  # the quality gate and how chunks are made from a transcript (chunker's own version is in its key)
EXPORT_VERSION = "1"
EMBED_VERSION = "1"


def stable_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """Content hash of an audio file, remembered per (path, size, mtime) so planning twice hashes once."""
    stat = path.stat()
    return _sha256_file(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class EpisodeJob:
    """Everything the stages need to know about one episode; small and picklable."""

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


@dataclass(frozen=True, slots=True)
class FormattedEpisode:
    chunks: list[Chunk]
    quality: QualityReport


@dataclass(slots=True)
class EpisodePlan:
    """What `ingest` will do: jobs to run, and episodes that cannot start (with the reason)."""

    jobs: list[EpisodeJob] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)
    up_to_date: list[str] = field(default_factory=list)


# Providers hold models and HTTP clients: one of each per process and configuration.
_providers: dict[tuple[str, str], Any] = {}
_providers_lock = threading.Lock()


def _provider(kind: str, settings: Settings, factory) -> Any:
    key = (kind, settings.model_dump_json())
    with _providers_lock:
        if key not in _providers:
            _providers[key] = factory(settings)
        return _providers[key]


def transcriber_for(settings: Settings) -> Transcriber:
    return _provider("transcriber", settings, make_transcriber)


def embedder_for(settings: Settings) -> Embedder:
    return _provider("embedder", settings, make_embedder)


def warm_up(settings: Settings) -> None:
    """Build the providers and load the chunker's tokenizer now, while the first transcriptions are in flight.

    Otherwise the first episodes to come back all build them at once, on the one GIL they share (measured:
    the OpenAI SDK import and the cl100k vocabulary held back the first 4 episodes' embedding by ~1-2 s).
    What cannot be built fails here silently: the stage that needs it raises the error, for its episode.
    """
    from .embedders.tokens import encoding

    for load in (functools.partial(transcriber_for, settings), functools.partial(embedder_for, settings), encoding):
        with contextlib.suppress(Exception):
            load()


def _job_for(settings: Settings, entry: CatalogueEntry) -> EpisodeJob:
    if not entry.file_name:
        raise ConfigError(f"{settings.episodes_file}: episode {entry.episode_id}: field 'file_name': no audio file")
    path = settings.audio_dir / entry.file_name
    if not path.is_file():
        raise ConfigError(
            f"{settings.episodes_file}: episode {entry.episode_id}: field 'file_name': audio file not found: {path}"
        )
    if path.stat().st_size == 0:  # an interrupted copy: uploading it would only earn a 400
        raise ConfigError(
            f"{settings.episodes_file}: episode {entry.episode_id}: field 'file_name': audio file is empty (0 bytes): {path}"
        )
    return EpisodeJob(
        episode_id=entry.episode_id,
        title=entry.display_title,
        stem=Path(entry.file_name).stem,
        audio_path=path.resolve(),
        audio_sha256=sha256_file(path),
        speakers_map=entry.speakers_map,
    )


def _feed_job_for(settings: Settings, row: store.EpisodeRow) -> EpisodeJob:
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
    """Choose the episodes to process: new, failed, or whose audio changed (or the named ones, or all with force),
    longest first.

    Candidates are the catalogue's entries and the feed episodes registered by `discover`. A malformed
    catalogue raises before any work; a missing audio file only affects its episode.
    """
    entries = catalogue_entries(settings)
    store.sync_catalogue(db, entries)
    rows = store.list_episodes(db)
    known = {row.episode_id: row for row in rows}
    candidates = {e.episode_id: functools.partial(_job_for, settings, e) for e in entries}
    candidates |= {r.episode_id: functools.partial(_feed_job_for, settings, r) for r in rows if r.source == "feed"}
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
        row = known[episode_id]
        current = row.status == "processed" and row.processed_sha256 == job.audio_sha256
        if current and not force and not episode_ids:
            plan.up_to_date.append(job.episode_id)
        else:
            plan.jobs.append(job)
    plan.jobs.sort(key=_audio_bytes, reverse=True)
    return plan


def _audio_bytes(job: EpisodeJob) -> int:
    """How long an episode will take, by proxy: its audio's size (the feed's declared size until downloaded).

    Jobs start longest first so that a pool of workers finishes together: in catalogue order the last
    long episode can start when the others are nearly done (measured: 16 episodes on 4 workers, 0.89
    of the ideal at best with zero overhead; longest first, 1.0).
    """
    return job.audio_path.stat().st_size if job.audio_path.is_file() else (job.audio_size or 0)


# --- discover and download --------------------------------------------------------------------


def discover(settings: Settings, db: Database) -> list[str]:
    """Read every FEED_URL and register its episodes (new ones pending); returns the ids of the new ones."""
    known = {row.episode_id for row in store.list_episodes(db)}
    items = [item for url in settings.feed_url for item in parse_feed(url)]
    store.sync_feed(db, items, settings.default_speakers_map)
    return [item.episode_id for item in items if item.episode_id not in known]


def download(settings: Settings, db: Database, job: EpisodeJob) -> EpisodeJob:
    """Fetch a feed episode's enclosure into AUDIO_DIR, record its hash and size, and drop older enclosures' files."""
    if job.audio_url is None:
        raise ConfigError(f"episode {job.episode_id}: no audio file and no audio_url to download it from")
    path, sha256, size = download_enclosure(
        job.audio_url, job.audio_path, max_bytes=settings.max_audio_bytes, expected_size=job.audio_size
    )
    store.record_audio(db, job.episode_id, sha256, audio_size=size)
    for stale in path.parent.glob(f"{job.episode_id}-*"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return replace(job, audio_sha256=sha256)


# --- transcribe -------------------------------------------------------------------------------


def transcribe_key(settings: Settings, job: EpisodeJob) -> str:
    t = transcriber_for(settings)
    # The local diarizer looks for as many voices as the episode has names; Deepgram finds its own (its keys stay).
    speakers = (len(job.speakers_map),) if t.provider == "local" else ()
    return stable_hash("transcribe", TRANSCRIBE_VERSION, job.audio_sha256, t.provider, t.model, t.options(), *speakers)


def transcribe(settings: Settings, job: EpisodeJob) -> TranscriptionResult:
    """Audio -> provider-neutral transcript plus the raw response (one provider request)."""
    t = transcriber_for(settings)
    if t.provider == "local":
        return t.transcribe(job.audio_path, speakers=len(job.speakers_map) or None)
    return t.transcribe(job.audio_path)


# --- format -----------------------------------------------------------------------------------


def chunker_config(settings: Settings) -> ChunkerConfig:
    return ChunkerConfig(max_tokens=settings.chunk_max_tokens)


def format_key(settings: Settings, job: EpisodeJob, transcript_key: str) -> str:
    """Every chunker parameter (and its version), the token counter, the names and the quality gate."""
    return stable_hash(
        "format", FORMAT_VERSION, transcript_key, job.speakers_map, chunker_config(settings).cache_key(), "cl100k",
        settings.skip_quality_gate,
    )


def format_episode(settings: Settings, job: EpisodeJob, transcript: Transcript) -> FormattedEpisode:
    """Quality gate, then speaker turns and retrieval chunks; a failing gate stops the episode."""
    report = check_transcript(transcript, transcript.duration)
    if not report.passed and not settings.skip_quality_gate:
        raise QualityGateError(
            f"episode {job.episode_id}: transcript failed the quality gate: {'; '.join(report.reasons)} "
            "(set SKIP_QUALITY_GATE=true to embed it anyway)"
        )
    chunks = chunk_transcript(transcript, job.speakers_map, config=chunker_config(settings))
    return FormattedEpisode(chunks=chunks, quality=report)


# --- export -----------------------------------------------------------------------------------


def export_key(settings: Settings, job: EpisodeJob, format_key_: str) -> str:
    """Includes whether the files are still there: deleted exports are written again."""
    folder = settings.transcripts_dir.resolve()
    present = all((folder / f"{job.stem}{suffix}").exists() for suffix in (".raw.json", ".chunks.json", ".md", ".srt", ".vtt"))
    return stable_hash("export", EXPORT_VERSION, format_key_, str(folder), job.title, present)


def export(settings: Settings, job: EpisodeJob, raw: dict[str, Any], transcript: Transcript, episode: FormattedEpisode) -> dict[str, str]:
    paths = export_episode(
        settings.transcripts_dir, job.stem, raw, transcript, episode.chunks, job.title, job.speakers_map
    )
    return {kind: str(path) for kind, path in paths.items()}


# --- embed ------------------------------------------------------------------------------------


def embed_key(settings: Settings, format_key_: str) -> str:
    e = embedder_for(settings)
    return stable_hash("embed", EMBED_VERSION, format_key_, e.model_id)


def embed(settings: Settings, chunks: list[Chunk]) -> EmbeddingBatch:
    """All of an episode's chunks in as few requests as the API limits allow."""
    return embedder_for(settings).embed([c.text for c in chunks])


# --- store ------------------------------------------------------------------------------------


def store_episode(settings: Settings, db: Database, job: EpisodeJob, episode: FormattedEpisode, batch: EmbeddingBatch) -> int:
    """Replace the episode's rows atomically and mark it processed; returns the number of segments."""
    e = embedder_for(settings)
    store.store_episode(
        db,
        job.episode_id,
        episode.chunks,
        model_id=e.model_id,
        provider=e.provider,
        model=e.model,
        vectors=batch.vectors,
        audio_sha256=job.audio_sha256,
        duration_seconds=episode.quality.duration,
    )
    return len(episode.chunks)


# --- cost ledger ------------------------------------------------------------------------------


def estimate_cost(settings: Settings, provider: str, audio_seconds: float, tokens: int) -> float:
    """USD at the configured list prices; local providers cost nothing."""
    if provider == "deepgram":
        return audio_seconds / 60 * settings.deepgram_price_per_minute
    if provider == "openai":
        return tokens / 1e6 * settings.openai_price_per_million_tokens
    return 0.0


def record_cost(
    settings: Settings, db: Database, run_id: str | None, episode_id: str, stage: str,
    provider: str, model: str, requests: int, audio_seconds: float, tokens: int,
) -> None:
    store.record_call(
        db, run_id=run_id, episode_id=episode_id, stage=stage, provider=provider, model=model, requests=requests,
        audio_seconds=audio_seconds, tokens=tokens, cost_usd=estimate_cost(settings, provider, audio_seconds, tokens),
    )
