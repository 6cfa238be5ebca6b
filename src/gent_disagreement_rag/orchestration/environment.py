"""Environment for Prefect processes (in-process runs, the server, workers), derived from Settings.

Prefect reads its settings from the environment, so they are set before it is imported. The
user's own PREFECT_* variables always win.
"""

from __future__ import annotations

import os

from ..settings import Settings
from ..storage.embedded import prefect_database_url


def prefect_environment(settings: Settings) -> dict[str, str]:
    """Postgres-backed API database (SQLite answers 503 under concurrent subflows), no telemetry."""
    return {
        "PREFECT_API_DATABASE_CONNECTION_URL": prefect_database_url(settings),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",  # the client side too: no telemetry, and no first-run notice in the middle of a run
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(settings.result_storage_path),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "gent_disagreement_rag",  # the library's own log lines reach the run's logs
    }


def apply_prefect_environment(settings: Settings) -> None:
    for name, value in prefect_environment(settings).items():
        os.environ.setdefault(name, value)
