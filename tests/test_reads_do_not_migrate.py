"""A read is a read: what only reads (`gdr status`, `gdr search`, `gdr db status`, and `gdr mcp` / `gdr web`, which
read as the reader role) checks the schema and never migrates it: on a schema behind this version it says at which
version it is and what to run, and leaves it as it was; `gdr db init` (and `gdr ingest`) migrate."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gent_disagreement_rag.errors import SchemaOutOfDateError
from gent_disagreement_rag.search import search
from gent_disagreement_rag.serve.archive import opened_archive
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.storage.schema import _migration_files, latest_schema_version

BIN = Path(sys.executable).parent
LATEST = latest_schema_version()
BEHIND = _migration_files()[-2][0]  # the version before the latest


@pytest.fixture
def behind_url(pg_server: str) -> Iterator[str]:
    """A database migrated up to the version before the latest, as an older gdr left it; dropped after."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_server.replace("/postgres?", f"/{name}?")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")
        for version, file_name, sql in _migration_files()[:-1]:
            with conn.transaction():
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, file_name))
    yield url
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def applied(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]


def test_reads_on_a_schema_behind_say_so_and_leave_it_then_db_init_migrates(tmp_path: Path, behind_url: str) -> None:
    catalogue = tmp_path / "episodes.json"
    catalogue.write_text(json.dumps([{"episode_id": "R-1", "file_name": "R-1.mp3", "title": "Read"}]))
    settings = Settings(_env_file=None, database_url=behind_url, gdr_home=tmp_path / "home", episodes_file=catalogue)
    message = (f"the database schema is at version {BEHIND} and this gdr needs version {LATEST}: "
               "run `gdr db init` (or `gdr ingest`) to migrate it")

    with pytest.raises(SchemaOutOfDateError) as searched:
        search("anything", settings=settings)
    with pytest.raises(SchemaOutOfDateError) as served:  # gdr mcp, gdr web
        with opened_archive(settings):
            pass
    with pytest.raises(SchemaOutOfDateError) as opened:
        Database.from_settings(settings)
    assert str(searched.value) == str(served.value) == str(opened.value) == message
    assert applied(behind_url) == BEHIND

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DATABASE_URL": behind_url,
           "GDR_HOME": str(tmp_path / "home"), "EPISODES_FILE": str(catalogue)}

    def gdr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "gdr"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env=env)

    status = gdr("status", "--json")
    assert (status.returncode, status.stdout, status.stderr) == (1, "", f"error: {message}\n")
    assert applied(behind_url) == BEHIND

    assert gdr("db", "init").returncode == 0
    assert applied(behind_url) == LATEST
    status = gdr("status", "--json")
    assert status.returncode == 0, status.stderr
    assert [e["episode_id"] for e in json.loads(status.stdout)["episodes"]] == ["R-1"]
