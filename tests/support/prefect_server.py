"""A real Prefect API server for tests, on the test session's embedded Postgres.

Like `prefect_test_harness`, but not on SQLite: a SQLite-backed server answers 503 "database is locked"
under concurrent subflows, which serialises the very runs the tests check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tests.support.builders import free_port


@contextmanager
def prefect_server(pg_server: str, database: str) -> Iterator[str]:
    """Start a server whose database is `database` (created) on the Postgres at `pg_server`; yields its API URL."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    socket_dir = pg_server.split("host=", 1)[1]
    url = f"postgresql+asyncpg://postgres:@/{database}?host={socket_dir}"
    with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: url, PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        server = SubprocessASGIServer(port=free_port())
        server.start(timeout=120)
    try:
        yield server.api_url
    finally:
        server.stop()


def drain_prefect_clients() -> None:
    """Send the run logs and events still queued while the server is up: stopped first, their workers
    retried against the dead server at interpreter exit and the process hung for 63-75 s ("Error logging to API")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)
