"""The Prefect flows: `ingest` maps an episode task over a ThreadPoolTaskRunner sized from
`max_parallel`; each mapped task runs the `episode_pipeline` subflow, which is the library's episode
sequence (`ingest.sequence.process_episode`) with each stage a cached, retried task.

Fan-out: in a run of its own (`gdr ingest`), the subflows run in the run's threads. A deployment run
hands each episode to the pool instead, as a run of the `episode_pipeline/default` deployment, so every
worker of the pool (any machine) takes some; the parent waits for them and writes the summary.

A subflow called from a task is identified by its task run, not by call order, so a retried run
re-attaches every episode to its own earlier work.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.transactions import CommitMode, transaction
from prefect.utilities.annotations import unmapped

from ..errors import AuthenticationError, QuotaExhaustedError
from ..ingest import stages
from ..ingest.context import RunContext
from ..ingest.plan import EpisodeJob, EpisodePlan, plan_episodes
from ..ingest.retry import RETRIES, RETRY_DELAYS, RETRY_JITTER, with_db_retries
from ..ingest.sequence import process_episode
from ..settings import Settings
from ..storage import costs, episodes, segments
from .fleet import fleet_settings
from .progress import RunProgress
from .tasks import PrefectStages, retry_transient

EPISODE_DEPLOYMENT = "episode_pipeline/default"
FAILED_PREFIX = "Flow run encountered an exception: "  # how Prefect words a flow run's failure


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
    processed_by: str = ""
    error: str = ""


class _RunState:
    """What the episodes of one run share: the context, the run id, whether episodes go to the pool's
    workers, and why the run stopped early."""

    __slots__ = ("ctx", "run_id", "on_workers", "_abort_lock", "abort_episode", "abort_reason")

    def __init__(self, ctx: RunContext, run_id: str, on_workers: bool):
        self.ctx, self.run_id, self.on_workers = ctx, run_id, on_workers
        self._abort_lock = threading.Lock()
        self.abort_episode: str | None = None
        self.abort_reason = ""

    def stop(self, episode_id: str, reason: str) -> None:
        with self._abort_lock:
            if self.abort_episode is None:
                self.abort_episode, self.abort_reason = episode_id, reason

    def report(self, summary: EpisodeSummary) -> None:
        self.ctx.progress(summary.episode, summary.status, asdict(summary))


def describe(exc: object, settings: Settings) -> str:
    """An error as one line for people: its class and message, secrets scrubbed."""
    return settings.scrub(f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc))


def _given(ctx: Any) -> RunContext | None:
    """The caller's context, or None when there is none in this process: a run started from the API
    (a deployment, a retry) holds Prefect's placeholder text for it, not the object."""
    return ctx if isinstance(ctx, RunContext) else None


@flow(name="episode_pipeline", flow_run_name="episode-{job.episode_id}", persist_result=False)
def episode_pipeline(job: EpisodeJob, run_id: str = "", ctx: Any = None) -> dict[str, float]:
    """[download ->] transcribe -> format (quality gate + chunks) -> export -> embed -> store, for one episode.

    `ctx` is the caller's RunContext. Without one (a run of the deployment, on any worker), a context is
    opened from the fleet's settings, and Deepgram requests count against the fleet's global limit.
    """
    given = _given(ctx)
    # Each stage's result and cache record are written when that stage ends (EAGER), not when the `episode`
    # task around this subflow ends, as its transaction otherwise makes them: a crash mid-episode keeps the
    # stages already paid for.
    with transaction(commit_mode=CommitMode.EAGER):
        if given is None:
            with RunContext.open(fleet_settings()) as own:
                outcome = process_episode(own, job, run_id, PrefectStages(own, job.episode_id, fleet_limits=True))
        else:
            outcome = process_episode(given, job, run_id, PrefectStages(given, job.episode_id))
    return {"segments": outcome.segments, "audio_seconds": outcome.audio_seconds}


@task(name="episode", task_run_name="episode-{job.episode_id}", cache_policy=NO_CACHE, persist_result=False)
def episode_task(job: EpisodeJob, run: _RunState) -> EpisodeSummary:
    """Claim the episode (no other run, worker or machine processes it meanwhile), run its subflow, and
    record how it ended."""
    ctx, summary = run.ctx, EpisodeSummary(job.episode_id, job.title, "running")
    if run.abort_episode is not None:
        summary.status, summary.error = "skipped", f"not started: the run stopped at episode {run.abort_episode}"
        run.report(summary)
        return summary
    try:
        claim = with_db_retries(episodes.claim_episode, ctx.db.url, job.episode_id)
    except Exception as exc:  # the database stayed away: this episode waits for the next run
        summary.status, summary.error = "failed", describe(exc, ctx.settings)
        run.report(summary)
        return summary
    if claim is None:  # another run has it: it is not done twice, and not a failure of this run
        summary.status, summary.error = "busy", "being processed by another run"
        run.report(summary)
        return summary
    run.report(summary)
    started = time.perf_counter()
    try:
        if run.on_workers:
            state = _on_a_worker(job, run)
        else:
            state = episode_pipeline(job, run.run_id, ctx, return_state=True)
    finally:
        claim.close()
    summary.seconds = round(time.perf_counter() - started, 2)
    if state.is_completed():
        [row] = episodes.list_episodes(ctx.db, [job.episode_id])  # the database is the record, wherever it ran
        summary.status, summary.segments, summary.processed_by = "processed", row.segments, row.processed_by or ""
        summary.audio_minutes = round((row.duration_seconds or 0.0) / 60, 2)
    else:
        exc = state.result(raise_on_failure=False) if not run.on_workers else _reason(state)
        summary.status, summary.error = "failed", describe(exc, ctx.settings)
        if isinstance(exc, AuthenticationError | QuotaExhaustedError):
            run.stop(job.episode_id, summary.error)
        episodes.mark_failed(ctx.db, job.episode_id, summary.error)
    ledger = costs.cost_totals(ctx.db, run_id=run.run_id, episode_id=job.episode_id)
    summary.tokens, summary.cost_usd = ledger.tokens, ledger.cost_usd
    run.report(summary)
    return summary


def _on_a_worker(job: EpisodeJob, run: _RunState) -> State:
    """The final state of the episode's own `episode_pipeline/default` run, taken by any worker of the pool."""
    parameters = {"job": json.loads(json.dumps(asdict(job), default=str)), "run_id": run.run_id}
    child = run_deployment(EPISODE_DEPLOYMENT, parameters=parameters, timeout=None, poll_interval=1,
                           flow_run_name=f"episode-{job.episode_id}")
    return child.state


def _reason(state: State) -> str:
    """Why an episode's own run did not complete: the error it raised, or how it ended (Crashed: ...)."""
    message = state.message or ""
    if state.is_failed() and message.startswith(FAILED_PREFIX):
        return message.removeprefix(FAILED_PREFIX)
    return f"{state.name}: {message}"


def _fan_out_to_workers(settings: Settings) -> bool:
    if settings.fan_out != "auto":
        return settings.fan_out == "workers"
    if deployment.get_id() is None:
        return False
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(EPISODE_DEPLOYMENT)
        except ObjectNotFound:
            return False
    return True


@task(name="discover", task_run_name="discover", cache_policy=NO_CACHE, retries=RETRIES,
      retry_delay_seconds=RETRY_DELAYS, retry_jitter_factor=RETRY_JITTER, retry_condition_fn=retry_transient)
def discover_task(ctx: RunContext) -> list[str]:
    """Register the feeds' new episodes (read afresh on every run)."""
    new = stages.discover(ctx)
    get_run_logger().info("%d new episodes in %d feeds", len(new), len(ctx.settings.feed_url))
    return new


# A nightly run that is still going after this long is stopped (TimedOut) before the next night's starts.
INGEST_TIMEOUT_SECONDS = 23 * 3600


@flow(name="ingest", log_prints=True, persist_result=False, timeout_seconds=INGEST_TIMEOUT_SECONDS)
def ingest(
    episode_ids: list[str] | None = None,
    max_parallel: int | None = None,
    force: bool = False,
    plan: EpisodePlan | None = None,
    ctx: Any = None,
) -> State:
    """Register the catalogue and the feeds' new episodes; process new, failed or changed ones (or the
    named ones; all with force), `max_parallel` at a time.

    `plan` and `ctx` are for callers that already planned and opened them (`gdr ingest`); a deployment
    run plans here and opens a context from the worker's settings.
    """
    ctx = _given(ctx)
    if ctx is None:
        settings = fleet_settings(**({"max_parallel_episodes": max_parallel} if max_parallel else {}))
        with RunContext.open(settings) as own:
            return ingest.fn(episode_ids, max_parallel, force, plan, own)
    settings, logger = ctx.settings, get_run_logger()
    stages.register_catalogue(ctx)
    feed_error = ""
    if settings.feed_url and plan is None:  # a feed that cannot be read fails the run at the end, not the catalogue's episodes
        discovered = discover_task(ctx, return_state=True)
        if not discovered.is_completed():
            feed_error = describe(discovered.result(raise_on_failure=False), settings)
            logger.error("feed discovery failed: %s", feed_error)
    if plan is None:
        plan = plan_episodes(settings, ctx.db, episode_ids, force)
    jobs, invalid, up_to_date = plan.jobs, plan.invalid, len(plan.up_to_date)
    for episode_id, error in invalid.items():
        episodes.mark_failed(ctx.db, episode_id, error)
    parallel = max_parallel or settings.max_parallel_episodes
    logger.info("%d episodes to process (%d up to date, %d invalid), %d at a time", len(jobs), up_to_date, len(invalid), parallel)
    for episode_id, reason in plan.stale.items():
        logger.info("episode %s is stale: %s", episode_id, reason)
    # As many transcriptions at once as episodes run at once, so that a run of one episode keeps every core for it.
    ctx = ctx.transcribing_at_once(max(1, min(parallel, len(jobs))))
    ctx = ctx.with_progress(RunProgress([job.episode_id for job in jobs], ctx.progress))
    run = _RunState(ctx, str(flow_run.get_id() or ""), _fan_out_to_workers(settings))
    for job in jobs:
        run.report(EpisodeSummary(job.episode_id, job.title, "queued"))
    summaries: list[EpisodeSummary] = []
    if jobs:
        warming = threading.Thread(target=ctx.warm_up, name="gdr-warm-up", daemon=True)
        if not run.on_workers:
            warming.start()
        with ThreadPoolTaskRunner(max_workers=parallel) as runner:
            futures = runner.map(episode_task, {"job": jobs, "run": unmapped(run)})
            summaries = [future.result() for future in futures]
        if warming.is_alive():
            warming.join()
    for episode_id, error in invalid.items():
        summaries.append(EpisodeSummary(episode_id, "", "failed", error=error))
        run.report(summaries[-1])
    if any(s.status == "processed" for s in summaries):
        segments.refresh_statistics(ctx.db)
    create_table_artifact(key="ingest-summary", table=[asdict(s) for s in summaries],
                          description=f"{len(summaries)} episodes; {up_to_date} already up to date")
    return _final_state(summaries, run, feed_error)


def _final_state(summaries: list[EpisodeSummary], run: _RunState, feed_error: str) -> State:
    failed = [s for s in summaries if s.status not in ("processed", "busy")]
    busy = sum(s.status == "busy" for s in summaries)
    message = f"{len(summaries) - len(failed) - busy}/{len(summaries)} episodes processed" + (
        f" ({busy} being processed by another run)" if busy else ""
    )
    if run.abort_episode is not None:  # a bad key or no credit: said once, not once per episode
        skipped = sum(s.status == "skipped" for s in summaries)
        message = f"run stopped: {run.abort_reason} ({skipped} episodes not started); {message}"
    if feed_error:
        message = f"feed discovery failed: {feed_error}; {message}"
    if failed:
        # Each reason in full, one line per episode: the message is what a notification of the run shows.
        message = f"{message}; {len(failed)} failed or skipped:\n" + "\n".join(f"- {s.episode}: {s.error}" for s in failed)
    if failed or feed_error:
        return Failed(message=message)
    return Completed(message=message, data=[asdict(s) for s in summaries])
