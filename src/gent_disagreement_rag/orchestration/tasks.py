"""The episode sequence's stages as Prefect tasks: cached on the key the library computes, retried on
transient errors only, never sooner than a provider's Retry-After."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.results import ResultRecord
from prefect.utilities.annotations import opaque

from ..ingest.context import RunContext
from ..ingest.retry import MAX_RETRY_AFTER, RETRIES, RETRY_DELAYS, RETRY_JITTER, is_transient
from ..ingest.sequence import STAGE_NAMES
from .fleet import DEEPGRAM_LIMIT

CACHED_STAGES = frozenset({"transcribe", "voices", "format", "export", "embed"})  # name, store: they read or write the database


def retry_transient(task_: Task, task_run: Any, state: Any) -> bool:
    """Retry 429/5xx/timeouts/database hiccups only; wait at least what the provider's Retry-After asks."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    if not is_transient(exc):
        return False
    if retry_after := getattr(exc, "retry_after", None):
        shortest = RETRY_DELAYS[min(task_run.run_count - 1, len(RETRY_DELAYS) - 1)] * (1 - RETRY_JITTER)
        time.sleep(min(max(0.0, retry_after - shortest), MAX_RETRY_AFTER))
    return True


def _stage_body(records: Path | None) -> Callable[..., Any]:
    """The task's function: the stage, run when Prefect found no usable record under its key (in `records`,
    when the cache is a local folder)."""

    def run_stage(episode: str, func: Callable[..., Any], args: tuple[Any, ...], cache_key: str | None = None) -> Any:
        if records is not None and cache_key is not None:
            _warn_if_unreadable(records / cache_key)
        return func(*args)

    return run_stage


def _warn_if_unreadable(record: Path) -> None:
    """Prefect takes a record it cannot read for a miss and says nothing; a kill while it wrote one (its
    local writes are not atomic) leaves such a torn file, which is overwritten when the stage succeeds."""
    try:
        data = record.read_bytes()
    except FileNotFoundError:
        return
    try:
        ResultRecord.deserialize(data)
    except Exception as exc:
        get_run_logger().warning("stage cache record %s is unreadable (%s, %d bytes): running the stage again",
                                 record, type(exc).__name__, len(data))


def _precomputed_key(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["cache_key"]


def _stage_task(name: str, storage: Path | str) -> Task:
    options: dict[str, Any] = dict(
        name=name, task_run_name=f"{name}-{{episode}}", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
        retry_jitter_factor=RETRY_JITTER, retry_condition_fn=retry_transient,
    )
    if name in CACHED_STAGES:
        options |= dict(cache_key_fn=_precomputed_key, persist_result=True, cache_result_in_memory=False,
                        result_storage=storage)
    else:
        options |= dict(cache_policy=NO_CACHE, persist_result=False)
    records = Path(storage) if name in CACHED_STAGES and isinstance(storage, Path) else None
    return task(**options)(_stage_body(records))


def _within_fleet_limit(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` holding a slot of the fleet's Deepgram limit (a global concurrency limit) while it runs."""

    def limited(*args: Any) -> Any:
        with concurrency(DEEPGRAM_LIMIT, occupy=1):
            return func(*args)

    return limited


class PrefectStages:
    """A `StageRunner` for `process_episode`: each stage a task, its results and cache records in
    GDR_HOME/cache, CACHE_DIR or the RESULT_STORAGE_BLOCK. On a fleet's worker (`fleet_limits`) Deepgram
    requests also take a slot of the global concurrency limit every machine shares."""

    def __init__(self, ctx: RunContext, episode_id: str, *, fleet_limits: bool = False):
        settings = ctx.settings
        storage = settings.result_storage_block or settings.result_storage_path
        self.episode_id = episode_id
        self.tasks = {name: _stage_task(name, storage) for name in STAGE_NAMES}
        self.limit_transcription = (fleet_limits
                                    and ctx.providers.transcriber_provider(settings.resolved_transcriber).fleet_limited)

    def __call__(self, name: str, func: Callable[..., Any], *args: Any, cache_key: str | None = None) -> Any:
        if name == "transcribe" and self.limit_transcription:
            func = _within_fleet_limit(func)
        # Inputs go in `opaque`: Prefect otherwise walks every object inside them (a transcript's thousands
        # of words, the chunks, the vectors) looking for futures, on every task call (BENCHMARKS.md
        # "Design figures").
        return self.tasks[name](self.episode_id, func, opaque(args), cache_key=cache_key)
