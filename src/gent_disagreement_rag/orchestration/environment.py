"""Environment for Prefect processes (in-process runs, the server, workers), derived from Settings.

Prefect reads its settings from the environment once, when it is first imported (a server subprocess, when
it starts), so they are in place before that and only for as long as it takes: `prefect_environment` is the
variables, for a subprocess's `env`; `applied_prefect_environment` puts them in os.environ for a block and
restores it after. The user's own PREFECT_* variables always win.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..settings import Settings


def prefect_environment(settings: Settings, api_database_url: str | None = None) -> dict[str, str]:
    """No telemetry, results under the settings' folder, and, given `api_database_url` (ensure_prefect_database:
    a Postgres-backed API database, as SQLite answers 503 under concurrent subflows), a server's database."""
    env = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",  # the client side too: no telemetry, and no first-run notice in the middle of a run
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(settings.result_storage_path),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "gent_disagreement_rag",  # the library's own log lines reach the run's logs
    }
    if api_database_url is not None:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = api_database_url
    return env


@contextmanager
def applied_prefect_environment(settings: Settings, api_database_url: str | None = None,
                                **extra: str) -> Iterator[None]:
    """os.environ with `prefect_environment` (and `extra`) for the block, where the user has not set them;
    restored after. Wraps Prefect's first import, or a server subprocess's start (it copies os.environ)."""
    added = {name: value for name, value in {**prefect_environment(settings, api_database_url), **extra}.items()
             if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
