"""`gdr server ...` and `gdr worker ...`: a local Prefect server and its workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..errors import GdrError
from ..settings import Settings
from .common import console, friendly_errors, server_app, worker_app


@server_app.command("start")
@friendly_errors
def server_start(
    port: Annotated[int, typer.Option(help="Port of the API and UI on 127.0.0.1")] = 4200,
) -> None:
    """Start the Prefect server (on the project's Postgres), the `default` pool, the deployment and a worker."""
    from ..orchestration import server

    info = server.start(Settings(), Path.cwd(), port=port)
    console.print(f"Prefect UI: {info.ui_url}  (API {info.api_url}); logs in {info.logs}")
    console.print(f"In another shell: export PREFECT_API_URL={info.api_url}; prefect deployment run ingest/default")


@server_app.command("stop")
@friendly_errors
def server_stop() -> None:
    """Stop the worker and the Prefect server started by `gdr server start`."""
    from ..orchestration import server

    stopped = server.stop(Settings())
    console.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@server_app.command("status")
@friendly_errors
def server_status() -> None:
    """Which of the server and the worker are running."""
    from ..orchestration import server

    pids = server.status(Settings())
    console.print("\n".join(f"{name} (pid {pid})" for name, pid in pids.items()) or "not running", highlight=False)


@server_app.command("publish")
@friendly_errors
def server_publish() -> None:
    """Write this machine's configuration to the Prefect server at PREFECT_API_URL, for the fleet's workers
    (`gdr server start` does it too): database and API-key blocks, the stage-cache block, the settings variable,
    the Deepgram concurrency limit."""
    from ..orchestration import server

    for line in server.publish_fleet(Settings(), _api_url()):
        console.print(line, highlight=False)


@worker_app.command("start")
@friendly_errors
def worker_start() -> None:
    """Start this machine's workers (needs only PREFECT_API_URL): one for `ingest` runs, one taking up to
    MAX_PARALLEL_EPISODES episodes at once from the fleet's Dask scheduler."""
    from ..orchestration import server

    settings = Settings()
    pids = server.start_worker(settings, Path.cwd(), _api_url())
    for name, pid in pids.items():
        console.print(f"{name} (pid {pid})", highlight=False)
    console.print(f"logs in {settings.home / 'logs'}", highlight=False)


@worker_app.command("stop")
@friendly_errors
def worker_stop() -> None:
    """Stop the workers started by `gdr worker start`: their episodes go to the fleet's other workers, and an
    `ingest` run they were running is resumed on another machine."""
    from ..orchestration import server

    stopped = server.stop(Settings(), only=server.WORKERS)
    console.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


def _api_url() -> str:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise GdrError("PREFECT_API_URL is not set (the server's API, e.g. http://server:4200/api)")
    return url
