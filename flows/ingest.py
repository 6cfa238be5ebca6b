"""Prefect flows: `ingest` runs `discover` (feeds configured) then one `episode_pipeline` subflow per
episode, at most `max_parallel` at once.

Thin by design: every stage is a library call from `gent_disagreement_rag.pipeline`, wrapped in an
async task that runs it in a worker thread (the stages block: HTTP, Whisper, psycopg), is cached on
a key built from what determines its output, and retries only transient errors.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import acreate_table_artifact
from prefect.states import Completed, Failed
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import opaque

from gent_disagreement_rag import pipeline, store
from gent_disagreement_rag.database import Database
from gent_disagreement_rag.errors import AuthenticationError, DatabaseUnavailableError, QuotaExhaustedError
from gent_disagreement_rag.pipeline import EpisodeJob, FormattedEpisode
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.transcript import TranscriptionResult

RETRIES = 4
RETRY_DELAYS = exponential_backoff(backoff_factor=1)(RETRIES)  # 1, 2, 4, 8 s (+ jitter)
RETRY_JITTER = 0.5  # each delay is drawn from [delay * (1 - RETRY_JITTER), delay * (1 + RETRY_JITTER)]
MAX_RETRY_AFTER = 120.0

_run_settings: ContextVar[Settings | None] = ContextVar("gdr_run_settings", default=None)
_databases: dict[str, Database] = {}

ProgressListener = Callable[[str, str, dict[str, Any]], None]
progress_listeners: list[ProgressListener] = []  # `gdr ingest` registers one to draw its live table


# The stages block (HTTP, Whisper, psycopg) and run in threads. Not asyncio.to_thread's default pool: it has
# cpu_count + 4 threads (6 on a 2-core machine) and a stage holds its thread for a whole provider request, so
# it capped the episodes in flight at 6 whatever MAX_PARALLEL_EPISODES said (measured: 16 Deepgram requests
# went out 6 at a time). Threads are started only as needed; 128 covers 64 parallel episodes (the maximum).
_stage_threads = ThreadPoolExecutor(max_workers=128, thread_name_prefix="gdr-stage")


async def _to_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """`asyncio.to_thread` on the stage pool (the caller's context variables go along, as there)."""
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_stage_threads, call)


def run_settings() -> Settings:
    return _run_settings.get() or Settings()


def run_database(settings: Settings) -> Database:
    """One pool per process and database (psycopg's pool is thread-safe)."""
    key = settings.model_dump_json(include={"database_url", "db_host", "db_port", "db_name", "gdr_home"})
    if key not in _databases:
        _databases[key] = Database.from_settings(settings)
    return _databases[key]


@dataclass(slots=True)
class EpisodeSummary:
    episode: str
    title: str
    status: str
    seconds: float = 0.0
    segments: int = 0
    audio_minutes: float = 0.0
    tokens: int = 0
    cost_usd: float = 0.0
    error: str = ""


def close_run_databases() -> None:
    """Close this process's pools (tests and long-lived processes that switch databases)."""
    while _databases:
        _databases.popitem()[1].close()


def _notify(summary: EpisodeSummary) -> None:
    for listener in progress_listeners:
        listener(summary.episode, summary.status, asdict(summary))


def is_transient(exc: BaseException | None) -> bool:
    import psycopg

    return bool(getattr(exc, "transient", False)) or isinstance(exc, psycopg.OperationalError | DatabaseUnavailableError)


async def retry_transient(task_, task_run, state) -> bool:
    """Retry 429/5xx/timeouts/DB hiccups only; wait at least what the provider's Retry-After asks."""
    exc = state.data if isinstance(state.data, BaseException) else await state.result(raise_on_failure=False)
    if not is_transient(exc):
        return False
    if retry_after := getattr(exc, "retry_after", None):
        shortest = RETRY_DELAYS[min(task_run.run_count - 1, len(RETRY_DELAYS) - 1)] * (1 - RETRY_JITTER)
        await asyncio.sleep(min(max(0.0, retry_after - shortest), MAX_RETRY_AFTER))
    return True


def _precomputed_key(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["cache_key"]


retried_stage = task(
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER,
    retry_condition_fn=retry_transient,
)
cached_stage = retried_stage(cache_key_fn=_precomputed_key, persist_result=True, cache_result_in_memory=False)


@retried_stage(name="discover", task_run_name="discover")
async def discover_task() -> list[str]:
    """Register the feeds' new episodes; not cached: the feed is read afresh on every run."""
    settings = run_settings()
    new = await _to_thread(pipeline.discover, settings, run_database(settings))
    get_run_logger().info("%d new episodes in %d feeds", len(new), len(settings.feed_url))
    return new


@retried_stage(name="download", task_run_name="download-{job.episode_id}")
async def download_task(job: EpisodeJob) -> EpisodeJob:
    """The episode's enclosure, resumed if a partial download is there; returns the job with the audio's hash."""
    settings = run_settings()
    return await _to_thread(pipeline.download, settings, run_database(settings), job)


async def _with_db_retries(func: Callable[..., Any], /, *args: Any) -> Any:
    """A database call in a stage thread, retried on transient errors (a restart, a dropped connection)
    with the stages' delays, outside any task: a hiccup here must not fail work already paid for."""
    for delay in [*RETRY_DELAYS, None]:
        try:
            return await _to_thread(func, *args)
        except Exception as exc:
            if delay is None or not is_transient(exc):
                raise
            await asyncio.sleep(delay)


async def _record_cost(
    settings: Settings, run_id: str, episode_id: str, stage: str, provider: str, model: str,
    requests: int, audio_seconds: float, tokens: int,
) -> None:
    """Write a call that was paid for to the cost ledger. Database hiccups are retried, and in the end
    only logged: failing the stage would make its retry pay for the same call again."""
    try:
        await _with_db_retries(
            pipeline.record_cost, settings, run_database(settings), run_id, episode_id, stage,
            provider, model, requests, audio_seconds, tokens,
        )
    except Exception as exc:
        if not is_transient(exc):
            raise
        get_run_logger().warning(
            "cost ledger: the %s call of episode %s is not recorded: %s", stage, episode_id, _describe(exc, settings)
        )


@cached_stage(name="transcribe", task_run_name="transcribe-{job.episode_id}")
async def transcribe_task(job: EpisodeJob, cache_key: str, run_id: str) -> TranscriptionResult:
    settings = run_settings()
    result = await _to_thread(pipeline.transcribe, settings, job)
    t = result.transcript
    await _record_cost(
        settings, run_id, job.episode_id, "transcribe", t.provider, t.model, 1 if t.provider != "local" else 0, t.duration, 0
    )
    return result


@cached_stage(name="format", task_run_name="format-{job.episode_id}")
async def format_task(job: EpisodeJob, transcription: TranscriptionResult, cache_key: str) -> FormattedEpisode:
    return await _to_thread(pipeline.format_episode, run_settings(), job, transcription.transcript)


@cached_stage(name="export", task_run_name="export-{job.episode_id}")
async def export_task(
    job: EpisodeJob, transcription: TranscriptionResult, episode: FormattedEpisode, cache_key: str
) -> dict[str, str]:
    return await _to_thread(
        pipeline.export, run_settings(), job, transcription.raw, transcription.transcript, episode
    )


@cached_stage(name="embed", task_run_name="embed-{job.episode_id}")
async def embed_task(job: EpisodeJob, episode: FormattedEpisode, cache_key: str, run_id: str):
    settings = run_settings()
    batch = await _to_thread(pipeline.embed, settings, episode.chunks)
    embedder = pipeline.embedder_for(settings)
    await _record_cost(
        settings, run_id, job.episode_id, "embed", embedder.provider, embedder.model, batch.requests, 0.0, batch.tokens
    )
    return batch


@retried_stage(name="store", task_run_name="store-{job.episode_id}")
async def store_task(job: EpisodeJob, episode: FormattedEpisode, batch) -> int:
    """Not cached by Prefect: the database itself is the record (an unchanged episode is a no-op rewrite)."""
    settings = run_settings()
    return await _to_thread(pipeline.store_episode, settings, run_database(settings), job, episode, batch)


@functools.cache
def _stored(stage: Task, storage: Path | str) -> Task:
    """The stage with its results and cache records in GDR_HOME/cache, CACHE_DIR or a storage block."""
    return stage.with_options(result_storage=storage)


@flow(name="episode_pipeline", flow_run_name="episode-{job.episode_id}", persist_result=False)
async def episode_pipeline(job: EpisodeJob, run_id: str = "") -> dict[str, Any]:
    """[download ->] transcribe -> format (quality gate + chunks) -> export -> embed -> store, for one episode."""
    settings = run_settings()
    storage = settings.result_storage_block or settings.result_storage_path
    if job.needs_download:
        job = await download_task(job)
    t_key = await _to_thread(pipeline.transcribe_key, settings, job)
    f_key = pipeline.format_key(settings, job, t_key)
    # Large stage outputs (a transcript's thousands of words, the chunks, the vectors) go in `opaque`: Prefect
    # otherwise walks every object inside them twice per task call, looking for futures (measured: ~4 s of
    # CPU per hour-long episode, more than all the stages' own work).
    transcription = await _stored(transcribe_task, storage)(job, cache_key=t_key, run_id=run_id)
    episode = await _stored(format_task, storage)(job, opaque(transcription), cache_key=f_key)
    await _stored(export_task, storage)(
        job, opaque(transcription), opaque(episode), cache_key=pipeline.export_key(settings, job, f_key)
    )
    e_key = await _to_thread(pipeline.embed_key, settings, f_key)
    batch = await _stored(embed_task, storage)(job, opaque(episode), cache_key=e_key, run_id=run_id)
    segments = await store_task(job, opaque(episode), opaque(batch))
    return {"segments": segments, "audio_seconds": transcription.transcript.duration}


async def _run_one(job: EpisodeJob, gate: asyncio.Semaphore, abort: dict[str, str], db: Database, run_id: str) -> EpisodeSummary:
    async with gate:
        summary = EpisodeSummary(job.episode_id, job.title, "running")
        if abort:
            summary.status, summary.error = "skipped", f"not started: the run stopped at episode {abort['episode']}"
            _notify(summary)
            return summary
        try:
            claim = await _with_db_retries(store.claim_episode, db.url, job.episode_id)
        except Exception as exc:  # the database stayed away: this episode waits for the next run
            summary.status, summary.error = "failed", _describe(exc, run_settings())
            _notify(summary)
            return summary
        if claim is None:  # another run has it: it is not done twice, and not a failure of this run
            summary.status, summary.error = "busy", "being processed by another run"
            _notify(summary)
            return summary
        _notify(summary)
        started = time.perf_counter()
        try:
            state = await episode_pipeline(job, run_id, return_state=True)
        finally:
            await _to_thread(claim.close)
        summary.seconds = round(time.perf_counter() - started, 2)
        if state.is_completed():
            result = await state.result()
            summary.status, summary.segments = "processed", result["segments"]
            summary.audio_minutes = round(result["audio_seconds"] / 60, 2)
        else:
            exc = await state.result(raise_on_failure=False)
            summary.status = "failed"
            summary.error = _describe(exc, run_settings())
            if isinstance(exc, AuthenticationError | QuotaExhaustedError):
                abort.setdefault("episode", job.episode_id)
                abort.setdefault("reason", summary.error)
            await _to_thread(store.mark_failed, db, job.episode_id, summary.error)
        ledger = await _to_thread(store.cost_totals, db, run_id=run_id, episode_id=job.episode_id)
        summary.tokens, summary.cost_usd = ledger.tokens, ledger.cost_usd
        _notify(summary)
        return summary


def _describe(exc: Any, settings: Settings) -> str:
    return settings.scrub(f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc))


@flow(name="ingest", log_prints=True, persist_result=False)
async def ingest(episode_ids: list[str] | None = None, max_parallel: int | None = None, force: bool = False):
    """Register the feeds' new episodes; process new, failed or changed ones (or the named ones; all with force)."""
    from prefect.runtime import flow_run

    settings = Settings(max_parallel_episodes=max_parallel) if max_parallel else Settings()  # the pool is sized from it
    _run_settings.set(settings)
    logger = get_run_logger()
    db = run_database(settings)
    feed_error = ""
    if settings.feed_url:  # a feed that cannot be read fails the run at the end, not the catalogue's episodes
        discovered = await discover_task(return_state=True)
        if not discovered.is_completed():
            feed_error = _describe(await discovered.result(raise_on_failure=False), settings)
            logger.error("feed discovery failed: %s", feed_error)
    plan = await _to_thread(pipeline.plan_episodes, settings, db, episode_ids, force)
    for episode_id, error in plan.invalid.items():
        await _to_thread(store.mark_failed, db, episode_id, error)
    parallel = settings.max_parallel_episodes
    logger.info(
        "%d episodes to process (%d up to date, %d invalid), %d at a time",
        len(plan.jobs), len(plan.up_to_date), len(plan.invalid), parallel,
    )
    for job in plan.jobs:
        _notify(EpisodeSummary(job.episode_id, job.title, "queued"))
    gate, abort = asyncio.Semaphore(parallel), {}
    run_id = str(flow_run.get_id() or "")
    warming = asyncio.ensure_future(_to_thread(pipeline.warm_up, settings)) if plan.jobs else None
    summaries = list(await asyncio.gather(*(_run_one(job, gate, abort, db, run_id) for job in plan.jobs)))
    if warming is not None:
        await warming
    summaries += [EpisodeSummary(e, "", "failed", error=err) for e, err in plan.invalid.items()]
    for summary in summaries[len(plan.jobs):]:
        _notify(summary)
    if any(s.status == "processed" for s in summaries):
        await _to_thread(store.refresh_statistics, db)
    await acreate_table_artifact(
        key="ingest-summary",
        table=[asdict(s) for s in summaries],
        description=f"{len(summaries)} episodes; {len(plan.up_to_date)} already up to date",
    )
    failed = [s for s in summaries if s.status not in ("processed", "busy")]
    busy = sum(s.status == "busy" for s in summaries)
    message = f"{len(summaries) - len(failed) - busy}/{len(summaries)} episodes processed" + (
        f" ({busy} being processed by another run)" if busy else ""
    )
    if abort:  # a bad key or no credit: said once, not once per episode
        skipped = sum(s.status == "skipped" for s in summaries)
        message = f"run stopped: {abort['reason']} ({skipped} episodes not started); {message}"
    if feed_error:
        message = f"feed discovery failed: {feed_error}; {message}"
    if failed:
        message = f"{message}; {len(failed)} failed or skipped: " + ", ".join(s.episode for s in failed)
    if failed or feed_error:
        return Failed(message=message)
    return Completed(message=message, data=[asdict(s) for s in summaries])
