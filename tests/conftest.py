"""Shared fixtures: one real embedded Postgres + pgvector per test session, a fresh database per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.storage.schema import migrate
from tests.support.builders import free_port
from tests.support.fakeapi import FakeAPI

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests never read a developer's .env, keys or caches.
for _var in ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "DATABASE_URL", "DB_HOST", "TRANSCRIBER", "EMBEDDER"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Admin URL of an embedded Postgres started for this test session, stopped and deleted after it.

    Not under pytest's tmp dir: pytest keeps that 0700, and postgres runs as another OS user when we are root.
    """
    from gent_disagreement_rag.storage.embedded import embedded_server, stop_embedded

    home = Path(tempfile.mkdtemp(prefix="gdr-test-pg-"))
    home.chmod(0o755)
    server = embedded_server(home / "pgdata")
    yield server.get_uri()
    stop_embedded(Settings(_env_file=None, gdr_home=home))
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def fresh_db_url(pg_server: str) -> Iterator[str]:
    """URL of a new, migrated database, dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_server.replace("/postgres?", f"/{name}?")
    migrate(url)
    yield url
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(tmp_path: Path, fresh_db_url: str) -> Settings:
    """Settings pointing at a fresh database, with every state directory under tmp_path."""
    return Settings(
        _env_file=None,
        database_url=fresh_db_url,
        gdr_home=tmp_path / "home",
        episodes_file=tmp_path / "episodes.json",
        audio_dir=tmp_path / "audio",
        transcripts_dir=tmp_path / "transcripts",
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    with Database.from_settings(settings) as database:
        yield database


@pytest.fixture
def fake_api() -> Iterator[FakeAPI]:
    """A local server speaking Deepgram's and OpenAI's wire formats for the real SDKs (tests/fakeapi.py)."""
    with FakeAPI() as api:
        yield api


@pytest.fixture(scope="session")
def prefect_api(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect API server for the test session, backed by the session's Postgres.

    Like `prefect_test_harness`, but not on SQLite: a SQLite-backed server answers 503 "database is
    locked" under concurrent subflows (measured), which serialises the very runs these tests check.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "prefect_test"')
    socket_dir = pg_server.split("host=", 1)[1]
    database = f"postgresql+asyncpg://postgres:@/prefect_test?host={socket_dir}"
    with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: database, PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        server = SubprocessASGIServer(port=free_port())
        server.start(timeout=120)
        try:
            results = tmp_path_factory.mktemp("prefect-results")  # flow-level results; stage caches live in GDR_HOME
            with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_RESULTS_LOCAL_STORAGE_PATH: results}):
                yield server.api_url
                drain_prefect_clients()
        finally:
            server.stop()


def drain_prefect_clients() -> None:
    """Send the run logs and events still queued while the server is up: stopped first, their workers
    retried against the dead server at interpreter exit and the process hung for 63-75 s ("Error logging to API")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


