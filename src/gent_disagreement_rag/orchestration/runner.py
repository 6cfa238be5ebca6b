"""`gdr ingest`: the `ingest` flow run in this process, on a temporary Prefect API server."""

from __future__ import annotations

import logging
import os

from ..ingest.context import RunContext
from ..ingest.plan import EpisodePlan
from .environment import apply_prefect_environment


def run_ingest(ctx: RunContext, *, episode_ids: list[str] | None, max_parallel: int | None, force: bool,
               plan: EpisodePlan | None):
    """The final state of one `ingest` run on `ctx`. Prefect reads its settings when first imported, so
    the environment is applied before the flows are."""
    apply_prefect_environment(ctx.settings)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # the live table replaces per-task lines
    from .flows import ingest

    # The temporary API server cancels its event recorder on exit and logs the CancelledError: noise, not a failure.
    logging.getLogger("prefect.server.services.task_run_recorder").disabled = True
    return ingest(episode_ids=episode_ids, max_parallel=max_parallel, force=force, plan=plan, ctx=ctx, return_state=True)
