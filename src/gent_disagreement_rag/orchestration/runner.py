"""`gdr ingest`: the `ingest` flow run in this process, on a temporary Prefect API server."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..ingest.context import RunContext
from .environment import apply_prefect_environment

LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "gent_disagreement_rag")


def run_ingest(ctx: RunContext, *, episode_ids: list[str] | None, max_parallel: int | None, force: bool):
    """The final state of one `ingest` run on `ctx` (activated for it: its pool, providers and progress). Prefect reads its settings when first imported, so
    the environment is applied before the flows are."""
    apply_prefect_environment(ctx.settings)
    # The terminal shows the live table and one line per failure; the run's log lines, tracebacks included, go
    # to GDR_HOME/logs/ingest.log (and the run's logs in the Prefect API).
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from .flows import ingest

    # The temporary API server cancels its event recorder on exit and logs the CancelledError: noise, not a failure.
    logging.getLogger("prefect.server.services.task_run_recorder").disabled = True
    with _logged_to(ctx.settings.home / "logs" / "ingest.log"):
        with ctx.activated():
            return ingest(episode_ids=episode_ids, max_parallel=max_parallel, force=force, return_state=True)


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
