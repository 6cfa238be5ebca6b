"""`gdr ingest`: the `ingest` flow run in this process, on a temporary Prefect API server."""

from __future__ import annotations

import contextvars
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..ingest.context import RunContext
from ..settings import Settings
from ..storage.embedded import ensure_prefect_database
from .environment import applied_prefect_environment

if TYPE_CHECKING:
    from prefect.states import State

LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "gent_disagreement_rag")


# After the first Ctrl-C (or SIGTERM) the episodes already running get this long to end; then the run is left.
GRACE_SECONDS = 10.0


@dataclass(slots=True)
class IngestResult:
    """How `gdr ingest`'s run ended: its final state, or None when it was interrupted and its running episodes
    did not end within the grace period (then the process must exit without waiting for their threads)."""

    state: State | None
    interrupted: bool


def run_ingest(ctx: RunContext, *, episode_ids: list[str] | None, max_parallel: int | None, force: bool,
               notify: Callable[[str], None]) -> IngestResult:
    """One `ingest` run on `ctx` (activated for it: its pool, providers and progress), on a temporary Prefect
    API server of its own.

    The first Ctrl-C or SIGTERM stops starting episodes and gives the running ones GRACE_SECONDS to end
    (`notify` tells the person so); a second one exits at once. Prefect reads its settings when first
    imported, so the environment is applied (for the run only) before the flows are."""
    # The terminal shows the live table and one line per failure; the run's log lines, tracebacks included, go
    # to GDR_HOME/logs/ingest.log (and the run's logs in the Prefect API).
    with applied_prefect_environment(ctx.settings, PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="CRITICAL"), \
            _logger_disabled("prefect.server.services.task_run_recorder"):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from .flows import ingest

        with _api_server(ctx.settings) as server, temporary_settings({PREFECT_API_URL: server.api_url}), \
                _logged_to(ctx.settings.home / "logs" / "ingest.log"), ctx.activated():
            outcome: list[State] = []
            run = contextvars.copy_context()
            thread = threading.Thread(target=run.run, name="gdr-ingest", daemon=True, args=(lambda: outcome.append(
                ingest(episode_ids=episode_ids, max_parallel=max_parallel, force=force, return_state=True)),))
            with _interruptible(ctx, notify, server.kill) as interrupted_at:
                thread.start()
                while thread.is_alive():
                    thread.join(0.2)
                    if interrupted_at and time.monotonic() - interrupted_at[0] > GRACE_SECONDS:
                        return IngestResult(None, interrupted=True)
            return IngestResult(outcome[0] if outcome else None, interrupted=bool(interrupted_at))


@contextmanager
def _interruptible(ctx: RunContext, notify: Callable[[str], None], before_exit: Callable[[], None]
                   ) -> Iterator[list[float]]:
    """SIGINT and SIGTERM handled for the run: the first interrupts it (the time goes into the yielded list),
    a second exits the process at once, after `before_exit`."""
    interrupted_at: list[float] = []

    def handle(signum: int, frame: object) -> None:
        if interrupted_at:
            notify("stopped at once: episodes still running are left pending for the next run")
            before_exit()
            os._exit(EXIT_INTERRUPTED)
        interrupted_at.append(time.monotonic())
        ctx.interrupted.set()
        notify(f"stopping: no new episodes start; running ones get {GRACE_SECONDS:.0f} s to end "
               "(Ctrl-C again to stop at once)")

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupted_at
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


EXIT_INTERRUPTED = 130  # what a shell reports for a program stopped by Ctrl-C


@contextmanager
def _api_server(settings: Settings) -> Iterator[TemporaryServer]:
    """The Prefect API the run reports to: PREFECT_API_URL when the user set one (their server's UI shows the
    run), else a temporary server of this process's own. Either way the run's logs and events are sent before
    the end."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()
    if not configured:
        with start_temporary_api_server(settings) as server:  # it sends them itself, before it ends the server
            yield server
        return
    try:
        yield TemporaryServer(configured, None)
    finally:
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


@dataclass(slots=True)
class TemporaryServer:
    api_url: str
    process: subprocess.Popen[bytes] | None

    def kill(self) -> None:
        """Ends it at once (it ignores SIGINT and SIGTERM): it must not outlive this process."""
        if self.process is not None:
            self.process.kill()


@contextmanager
def start_temporary_api_server(settings: Settings) -> Iterator[TemporaryServer]:
    """A Prefect API server for this process's run (what Prefect would start by itself), started with SIGINT
    and SIGTERM blocked, which it inherits: Ctrl-C in a terminal (or a service manager's SIGTERM) reaches the
    whole process group, and the server must outlive it to record how the run ended. At the end the run's
    logs and events are sent, then the server is killed (it ignores SIGTERM). Its database is the settings'
    Postgres's `prefect` database (ensure_prefect_database: created, and the embedded server started, if needed)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        with applied_prefect_environment(settings, ensure_prefect_database(settings)):
            server.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    temporary = TemporaryServer(server.api_url, server.server_process)
    try:
        yield temporary
    finally:
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        temporary.kill()
        server.stop()


@contextmanager
def _logged_to(path: Path) -> Iterator[None]:
    """Prefect's run loggers and the library's, appended to `path` for the duration of the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


@contextmanager
def _logger_disabled(name: str) -> Iterator[None]:
    """The logger `name` off for the block, as it was after. The temporary API server cancels its event recorder
    on exit and logs the CancelledError: noise, not a failure."""
    logger = logging.getLogger(name)
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was
