"""Where a run's episodes run: the threads of its own process, or the fleet's Dask cluster.

The cluster is `dask.distributed`: one scheduler beside the Prefect server (`gdr server start`), one
`dask worker` per machine (`gdr worker start`) with MAX_PARALLEL_EPISODES threads, each a long-lived
process that takes episodes as threads free up. prefect-dask's DaskTaskRunner submits the `episode` tasks
to it. When a worker dies, or its machine goes silent for DASK_WORKER_TTL, the scheduler gives its
episodes to the others (each retried up to DASK_ALLOWED_FAILURES times): a dead machine costs time, not
episodes, and needs no one to press Retry.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prefect.logging import get_run_logger
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from ..errors import ConfigError
from ..settings import FanOut, Settings

DEFAULT_SCHEDULER_PORT = 8786
# A worker's episode slot frees as its episode ends; the scheduler hands out the next one only then (not one
# extra per worker, Dask's default saturation of 1.1), so an episode never waits behind another on a busy
# worker while a thread elsewhere is idle.
WORKER_SATURATION = "1.0"
# How long a machine may stay silent before its episodes go to the others (Dask's default is 5 minutes).
WORKER_TTL = "60s"
# Workers an episode may take down with it before the run gives up on it (Dask's default).
ALLOWED_FAILURES = "3"


@dataclass(frozen=True, slots=True)
class Placement:
    description: str  # for the run's log
    warm_up_here: bool  # the episodes run in this process: build the providers while the first ones start


def scheduler_address(settings: Settings) -> str:
    return settings.dask_scheduler_address or f"tcp://127.0.0.1:{DEFAULT_SCHEDULER_PORT}"


def scheduler_reachable(address: str, timeout: float = 3.0) -> bool:
    parts = urlsplit(address)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or DEFAULT_SCHEDULER_PORT), timeout):
            return True
    except OSError:
        return False


def scheduler_environment() -> dict[str, str]:
    """Dask's configuration for the scheduler process (read from DASK_* variables when it starts)."""
    return {"DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": WORKER_SATURATION,
            "DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": WORKER_TTL,
            "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": ALLOWED_FAILURES}


def scheduler_command(dask: str, address: str) -> list[str]:
    parts = urlsplit(address)
    return [dask, "scheduler", "--host", parts.hostname or "127.0.0.1", "--port",
            str(parts.port or DEFAULT_SCHEDULER_PORT), "--no-dashboard", "--no-show"]


def worker_command(dask: str, address: str, name: str, threads: int) -> list[str]:
    # One process (under a nanny that restarts it if it dies alone), MAX_PARALLEL_EPISODES threads. The flows
    # module is imported when the worker starts (Dask's preload), not by its first episode: Prefect's engine and
    # the pipeline take seconds of CPU to import, which would otherwise delay whichever episode comes first.
    return [dask, "worker", address, "--name", name, "--nthreads", str(threads), "--nworkers", "1",
            "--no-dashboard", "--preload", "gent_disagreement_rag.orchestration.flows"]


@contextlib.contextmanager
def episode_runner(settings: Settings, parallel: int, *, in_deployment: bool) -> Iterator[tuple[TaskRunner, Placement]]:
    """The task runner for a run's episodes: the cluster for a deployment run when the fleet has one (FAN_OUT
    auto), or when FAN_OUT=cluster; else `parallel` threads of this process."""
    address = scheduler_address(settings)
    wanted = settings.fan_out == FanOut.CLUSTER or (
        settings.fan_out == FanOut.AUTO and in_deployment and settings.dask_scheduler_address is not None)
    if wanted and not scheduler_reachable(address):
        if settings.fan_out == FanOut.CLUSTER:
            raise ConfigError(f"FAN_OUT=cluster: no Dask scheduler answers at {address} (DASK_SCHEDULER_ADDRESS)")
        get_run_logger().warning("the fleet's Dask scheduler at %s does not answer: running the episodes in this "
                                 "process, %d at a time", address, parallel)
        wanted = False
    if wanted:
        from prefect_dask import DaskTaskRunner

        with DaskTaskRunner(address=address) as cluster:
            yield cluster, Placement(f"on the Dask cluster at {address}", warm_up_here=False)
        return
    threads: ThreadPoolTaskRunner[Any]
    with ThreadPoolTaskRunner(max_workers=parallel) as threads:
        yield threads, Placement(f"in this process, {parallel} at a time", warm_up_here=True)
