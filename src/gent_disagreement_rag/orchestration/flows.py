"""The Prefect flows: `ingest` maps the `episode` task over a task runner; each mapped task runs the
`episode_pipeline` subflow, which is the library's episode sequence (`ingest.sequence.process_episode`)
with each stage a cached, retried task.

The task runner is where the episodes run (cluster.py): the threads of the run's own process (`gdr ingest`,
or a deployment run without a cluster), or the fleet's Dask cluster, whose workers (one per machine, each
with MAX_PARALLEL_EPISODES threads) take the episodes, and whose scheduler gives a dead worker's episodes to
the others.

Both flows take plain, JSON-able parameters, so a run is the same whether `gdr ingest`, a schedule, a retry
or an automation started it. Each opens what it needs inside (`run_context`): the context its caller
activated in this process (`gdr ingest` activates one for its live table, the flow for its threads), or its
own from the fleet's settings (a deployment run, an episode on a cluster worker).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.futures import PrefectFuture
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled, Completed, Crashed, Failed, State
from prefect.transactions import CommitMode, transaction
from prefect.utilities.annotations import unmapped

from ..errors import AuthenticationError, QuotaExhaustedError
from ..ingest import stages
from ..ingest.context import RunContext
from ..ingest.events import EpisodeStatus, EpisodeSummary, ProgressEvent
from ..ingest.plan import EpisodeJob, plan_episodes
from ..ingest.retry import RETRIES, RETRY_DELAYS, RETRY_JITTER, with_db_retries
from ..ingest.sequence import process_episode
from ..storage import attempts, costs, episodes, segments
from .cluster import episode_runner
from .fleet import fleet_settings
from .progress import RunProgress
from .tasks import PrefectStages, retry_transient

FAILED_PREFIX = "Flow run encountered an exception: "  # how Prefect words a flow run's failure
ELSEWHERE = "processed by another run while this one waited for it"
# A run that crashed (its machine died) is resumed by the server's automation (server.py); one that crashes
# again and again is stopped here instead, with a reason.
MAX_RUN_ATTEMPTS = 4


def describe(exc: object, settings: Any) -> str:
    """An error as one line for people: its class and message, secrets scrubbed."""
    return settings.scrub(f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc))


@contextlib.contextmanager
def run_context(**overrides: Any) -> Iterator[RunContext]:
    """The context activated by whoever called this code in this process, or one of its own, opened from
    the fleet's settings (the Prefect server's variable and blocks under this machine's environment),
    activated for what runs inside and closed at the end."""
    active = RunContext.active()
    if active is not None:
        yield active
        return
    with RunContext.open(fleet_settings(**overrides), fleet=True) as own, own.activated():
        yield own


@flow(name="episode_pipeline", flow_run_name="episode-{episode_id}", persist_result=False)
def episode_pipeline(episode_id: str, job: dict[str, Any], run_id: str = "", attempt: int | None = None) -> dict[str, float]:
    """[download ->] transcribe -> format (quality gate + chunks) -> export -> embed -> store, for one episode."""
    with run_context() as ctx:
        if attempt is not None:
            attempts.set_flow_run(ctx.db, attempt, str(flow_run.get_id()))
        # Each stage's result and cache record are written when that stage ends (EAGER), not when the
        # `episode` task around this subflow ends: a crash mid-episode keeps the stages already paid for.
        with transaction(commit_mode=CommitMode.EAGER):
            outcome = process_episode(ctx, EpisodeJob.from_json(job), run_id,
                                      PrefectStages(ctx, episode_id, fleet_limits=ctx.fleet))
    return {"segments": outcome.segments, "audio_seconds": outcome.audio_seconds}


@task(name="episode", task_run_name="episode-{episode_id}", cache_policy=NO_CACHE, persist_result=False)
def episode_task(episode_id: str, job: dict[str, Any], run_id: str) -> State:
    """Claim the episode (no other run, worker or machine processes it meanwhile), run its subflow, and
    record how it ended. Ends Failed when the episode failed, with its reason as the state's message."""
    with run_context() as ctx:
        # In this process the parent cannot cancel a task its thread has already picked up: the task checks.
        if ctx.interrupted.is_set() or ctx.halted.is_set():
            return Cancelled(message="not started: the run stopped first")
        ctx.progress(ProgressEvent(episode_id, EpisodeStatus.RUNNING))
        claim = with_db_retries(episodes.wait_for_claim, ctx.db.url, episode_id)
        try:
            if claim.done_meanwhile:
                return Completed(message=ELSEWHERE)
            attempt = attempts.start_attempt(ctx.db, run_id, episode_id, stages.processed_by(ctx))
            _crash_abandoned_attempts(ctx, run_id, episode_id, attempt)
            state = episode_pipeline(episode_id, job, run_id, attempt, return_state=True)
            if state.is_completed():
                attempts.end_attempt(ctx.db, attempt, attempts.AttemptOutcome.PROCESSED)
                return Completed(message="processed")
            exc = state.result(raise_on_failure=False)
            reason = describe(exc, ctx.settings)
            episodes.mark_failed(ctx.db, episode_id, reason)
            attempts.end_attempt(ctx.db, attempt, attempts.AttemptOutcome.FAILED)
            if isinstance(exc, AuthenticationError | QuotaExhaustedError):
                ctx.halted.set()
            # The exception travels as the state's data: the run stops on a bad key or no credit.
            return Failed(message=reason, data=exc if isinstance(exc, BaseException) else RuntimeError(reason))
        finally:
            claim.close()


def _crash_abandoned_attempts(ctx: RunContext, run_id: str, episode_id: str, current: int) -> None:
    """An earlier attempt at this episode in this run that never ended died with its worker: its
    `episode_pipeline` run is marked Crashed, so the UI does not show it running forever."""
    dead = [a for a in attempts.attempts_of(ctx.db, run_id, episode_id) if a.died and a.id != current and a.flow_run_id]
    if not dead:
        return
    with get_client(sync_client=True) as client:
        for attempt in dead:
            run = client.read_flow_run(attempt.flow_run_id)  # type: ignore[arg-type]
            if run.state is not None and not run.state.is_final():
                client.set_flow_run_state(run.id, Crashed(message=f"its worker {attempt.worker} went away; "
                                                                  f"the episode was started again"), force=True)


@task(name="discover", task_run_name="discover", cache_policy=NO_CACHE, retries=RETRIES,
      retry_delay_seconds=RETRY_DELAYS, retry_jitter_factor=RETRY_JITTER, retry_condition_fn=retry_transient)
def discover_task() -> list[str]:
    """Register the feeds' new episodes (read afresh on every run)."""
    with run_context() as ctx:
        new = stages.discover(ctx)
        get_run_logger().info("%d new episodes in %d feeds", len(new), len(ctx.settings.feed_url))
    return new


# A nightly run that is still going after this long is stopped (TimedOut) before the next night's starts.
INGEST_TIMEOUT_SECONDS = 23 * 3600


@flow(name="ingest", log_prints=True, persist_result=False, timeout_seconds=INGEST_TIMEOUT_SECONDS)
def ingest(episode_ids: list[str] | None = None, max_parallel: int | None = None, force: bool = False) -> State:
    """Register the catalogue and the feeds' new episodes; process new, failed or changed ones (or the
    named ones; all with force), `max_parallel` at a time in this process, or on the fleet's cluster."""
    overrides = {"max_parallel_episodes": max_parallel} if max_parallel else {}
    with run_context(**overrides) as ctx:
        return _ingest(ctx, episode_ids, max_parallel, force)


def _ingest(ctx: RunContext, episode_ids: list[str] | None, max_parallel: int | None, force: bool) -> State:
    settings, logger = ctx.settings, get_run_logger()
    run_id = str(flow_run.get_id() or "")
    if flow_run.get_run_count() > 1:
        if flow_run.get_run_count() > MAX_RUN_ATTEMPTS:
            return Failed(message=f"this run crashed {MAX_RUN_ATTEMPTS} times; not resumed again (see its logs)")
        _crash_abandoned_task_runs(run_id)
    stages.register_catalogue(ctx)
    feed_error = ""
    if settings.feed_url:  # a feed that cannot be read fails the run at the end, not the catalogue's episodes
        discovered = discover_task(return_state=True)
        if not discovered.is_completed():
            feed_error = describe(discovered.result(raise_on_failure=False), settings)
            logger.error("feed discovery failed: %s", feed_error)
    plan = plan_episodes(settings, ctx.db, episode_ids, force)
    jobs = plan.jobs
    for episode_id, error in plan.invalid.items():
        episodes.mark_failed(ctx.db, episode_id, error)
    parallel = max_parallel or settings.max_parallel_episodes
    for episode_id, reason in plan.stale.items():
        logger.info("episode %s is stale: %s", episode_id, reason)
    summaries: dict[str, EpisodeSummary] = {}
    stop = _Stop()
    if jobs:
        # As many transcriptions at once as episodes run at once, so that a run of one episode keeps every core for it.
        local = ctx.transcribing_at_once(max(1, min(parallel, len(jobs))))
        local = local.with_progress(RunProgress([job.episode_id for job in jobs], ctx.progress))
        for job in jobs:
            queued = EpisodeSummary(job.episode_id, EpisodeStatus.QUEUED, title=job.title)
            local.progress(ProgressEvent(job.episode_id, EpisodeStatus.QUEUED, summary=queued))
        with episode_runner(settings, parallel, in_deployment=deployment.get_id() is not None) as (runner, where), \
                local.activated():
            logger.info("%d episodes to process (%d up to date, %d invalid) %s", len(jobs), len(plan.up_to_date),
                        len(plan.invalid), where.description)
            if where.warm_up_here:  # the providers this process's threads will use, built while the first episodes start
                threading.Thread(target=local.warm_up, name="gdr-warm-up", daemon=True).start()
            # (TaskRunner.map's signature is typed for async tasks too: a sync task's return type does not match it)
            futures = runner.map(episode_task, {"episode_id": [j.episode_id for j in jobs],  # type: ignore[arg-type]
                                                "job": [j.as_json() for j in jobs], "run_id": unmapped(run_id)})
            for job, outcome in _as_they_end(jobs, futures, stop, local):
                summary = _summary(local, run_id, job, outcome)
                summaries[job.episode_id] = summary
                local.progress(ProgressEvent(job.episode_id, summary.status, summary=summary))
    ordered = [summaries[job.episode_id] for job in jobs]
    for episode_id, error in plan.invalid.items():
        ordered.append(EpisodeSummary(episode_id, EpisodeStatus.FAILED, error=error))
        ctx.progress(ProgressEvent(episode_id, EpisodeStatus.FAILED, summary=ordered[-1]))
    if any(s.status == EpisodeStatus.PROCESSED for s in ordered):
        segments.refresh_statistics(ctx.db)
    create_table_artifact(key="ingest-summary", table=[asdict(s) for s in ordered],
                          description=f"{len(ordered)} episodes; {len(plan.up_to_date)} already up to date")
    final = _final_state(ordered, stop, feed_error)
    if final.is_failed():  # in the run's log too: `prefect deployment run --watch` shows the logs, not the message
        logger.error("%s", final.message)
    return final


@dataclass(slots=True)
class _Outcome:
    """How an episode's task ended, as the parent saw it."""

    status: EpisodeStatus
    error: str = ""
    stops_the_run: bool = False  # a failure every episode would meet: a bad key, no credit


@dataclass(slots=True)
class _Stop:
    """Why the run stopped starting episodes: at which episode (a bad key, no credit), or interrupted."""

    episode: str | None = None
    reason: str = ""
    interrupted: bool = False


def _as_they_end(jobs: list[EpisodeJob], futures: list[PrefectFuture[Any]], stop: _Stop, ctx: RunContext
                 ) -> Iterator[tuple[EpisodeJob, _Outcome]]:
    """Each episode's outcome as its task ends. After a failure that every episode would meet, or when the
    run is interrupted, the episodes not yet started are cancelled and reported as skipped (one already
    started runs on to its end)."""
    ended: queue.SimpleQueue[int] = queue.SimpleQueue()
    # Both runners' futures (concurrent.futures' and Dask's) call back when done, failed or cancelled.
    wrapped = [future.wrapped_future for future in futures]  # type: ignore[attr-defined]
    for index, inner in enumerate(wrapped):
        inner.add_done_callback(lambda _, index=index: ended.put(index))
    for _ in futures:
        while True:
            if ctx.interrupted.is_set() and not stop.interrupted:
                stop.interrupted = True
                for inner in wrapped:
                    inner.cancel()
            try:
                index = ended.get(timeout=0.2)
                break
            except queue.Empty:
                continue
        outcome = _outcome_of(wrapped[index], ctx.settings)
        if outcome.stops_the_run and stop.episode is None:
            stop.episode, stop.reason = jobs[index].episode_id, outcome.error
            for inner in wrapped:
                inner.cancel()
        yield jobs[index], outcome


def _outcome_of(wrapped: Any, settings: Any) -> _Outcome:
    """The outcome of a finished future of either runner; its result is the task run's final state."""
    if wrapped.cancelled():
        return _Outcome(EpisodeStatus.SKIPPED)
    try:
        state = wrapped.result()
    except CancelledError:
        return _Outcome(EpisodeStatus.SKIPPED)
    except Exception as exc:  # the cluster gave up on it: the workers that took it died (KilledWorker)
        return _Outcome(EpisodeStatus.FAILED, describe(exc, settings))
    if state.is_completed():
        return _Outcome(EpisodeStatus.BUSY if state.message == ELSEWHERE else EpisodeStatus.PROCESSED)
    if state.is_cancelled():
        return _Outcome(EpisodeStatus.SKIPPED)
    error = state.result(raise_on_failure=False) if state.is_failed() else None
    return _Outcome(EpisodeStatus.FAILED, state.message or state.name,
                    stops_the_run=isinstance(error, AuthenticationError | QuotaExhaustedError))


def _summary(ctx: RunContext, run_id: str, job: EpisodeJob, outcome: _Outcome) -> EpisodeSummary:
    """The episode's row of the summary, from the database: the record, wherever the episode ran."""
    summary = EpisodeSummary(job.episode_id, outcome.status, error=outcome.error, title=job.title)
    if outcome.status == EpisodeStatus.SKIPPED:
        summary.error = ("not started: the run was interrupted" if ctx.interrupted.is_set()
                         else "not started: the run stopped first")
        return summary
    tried = attempts.attempts_of(ctx.db, run_id, job.episode_id)
    summary.workers = ", ".join(a.worker + (" (died)" if a.died else "") for a in tried)
    if tried and tried[-1].ended_at is not None:
        summary.seconds = round((tried[-1].ended_at - tried[0].started_at).total_seconds(), 2)
    [row] = episodes.list_episodes(ctx.db, [job.episode_id])
    if outcome.status in (EpisodeStatus.PROCESSED, EpisodeStatus.BUSY):
        summary.segments, summary.processed_by = row.segments, row.processed_by or ""
        summary.audio_minutes = round((row.duration_seconds or 0.0) / 60, 2)
    elif tried and tried[-1].died:  # the cluster gave up on it: record why, as the task could not
        episodes.mark_failed(ctx.db, job.episode_id, outcome.error)
    ledger = costs.cost_totals(ctx.db, run_id=run_id, episode_id=job.episode_id)
    summary.tokens, summary.cost_usd = ledger.tokens, ledger.cost_usd
    return summary


def _crash_abandoned_task_runs(run_id: str) -> None:
    """This run is being resumed after its process died: the task runs that process left Running are marked
    Crashed, so that the UI shows each episode's earlier try as ended (its work resumes under a new task run)."""
    with get_client(sync_client=True) as client:
        left = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])),
            task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING,
                                                                                     StateType.PENDING]))),
        )
        for run in left:
            client.set_task_run_state(run.id, Crashed(message=f"the run's process on {socket.gethostname()} or another "
                                                              "machine died; the run was resumed"), force=True)


REASONS_AFTER = " — "  # in a failed run's state message, between the verdict and the episodes' reasons


def _final_state(summaries: list[EpisodeSummary], stop: _Stop, feed_error: str) -> State:
    failed = [s for s in summaries if s.status not in (EpisodeStatus.PROCESSED, EpisodeStatus.BUSY)]
    busy = sum(s.status == EpisodeStatus.BUSY for s in summaries)
    message = f"{len(summaries) - len(failed) - busy}/{len(summaries)} episodes processed" + (
        f" ({busy} by another run)" if busy else ""
    )
    skipped = sum(s.status == EpisodeStatus.SKIPPED for s in summaries)
    if stop.episode is not None:  # a bad key or no credit: said once, not once per episode
        message = f"run stopped: {stop.reason} ({skipped} episodes not started); {message}"
    elif stop.interrupted:
        message = f"run interrupted ({skipped} episodes not started); {message}"
    if feed_error:
        message = f"feed discovery failed: {feed_error}; {message}"
    if failed:
        # Each reason in full: the message is what a notification of the run shows. One line (the UI shows a
        # newline as a literal \n): the verdict, REASONS_AFTER, then each episode's reason.
        message = f"{message}; {len(failed)} failed or skipped{REASONS_AFTER}" + "; ".join(
            f"{s.episode}: {s.error}" for s in failed)
    if failed or feed_error:
        return Failed(message=message)
    return Completed(message=message, data=[asdict(s) for s in summaries])
