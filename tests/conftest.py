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
from tests.support.fakeapi import FakeAPI
from tests.support.prefect_server import drain_prefect_clients, prefect_server
from tests.support.world import one_episode, world  # noqa: F401  (fixtures: pytest finds them here)

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


@pytest.fixture(scope="session", autouse=True)
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One MODELS_DIR for the session, the speaker model built in it up front: every episode's voices stage loads
    it, and each test's GDR_HOME building its own would cost each test the build (~10 s). Set in this process's
    environment, so the settings of every test and of the `gdr` processes that inherit it read it; a child given
    an environment of its own builds in its GDR_HOME, as a user's does."""
    from gent_disagreement_rag.providers.transcribers.speaker_embeddings import ecapa_model_path

    folder = tmp_path_factory.mktemp("models")
    ecapa_model_path(folder)
    before = os.environ.get("MODELS_DIR")
    os.environ["MODELS_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("MODELS_DIR", None)
    else:
        os.environ["MODELS_DIR"] = before


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
    """The test session's Prefect API server (tests/support/prefect_server.py), the default for in-process runs."""
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    with prefect_server(pg_server, "prefect_test") as api_url:
        results = tmp_path_factory.mktemp("prefect-results")  # flow-level results; stage caches live in GDR_HOME
        with temporary_settings({PREFECT_API_URL: api_url, PREFECT_RESULTS_LOCAL_STORAGE_PATH: results}):
            yield api_url
            drain_prefect_clients()


# The `fast` tier (`make test-fast`, mutmut) starts no server: a test marked fast that needs one is a mistake
# found at collection, not a tier that slowly stops being fast.
_SERVERS = {"pg_server", "prefect_api"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = [f"{item.nodeid} uses {', '.join(sorted(_SERVERS & set(item.fixturenames)))}" for item in items
             if item.get_closest_marker("fast") and _SERVERS & set(getattr(item, "fixturenames", ()))]
    if wrong:
        raise pytest.UsageError("tests marked fast must start no server:\n" + "\n".join(wrong))
