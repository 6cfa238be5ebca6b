"""The embedded Postgres a user gets without configuring one: `gdr db init | url | status | stop`, the legacy
`seed-db`, its buffer cache setting, and one clear line when no server is listening.

Commands run as the user runs them: the installed entry points in a subprocess, with only PATH and HOME from this
environment (so nothing of the test session leaks in) and their own GDR_HOME."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.embedded import shared_buffers_mb, stop_embedded
from tests.support.cli import CATALOGUE, LATEST, MIGRATIONS, run, table_rows


@pytest.fixture
def embedded_home(tmp_path: Path) -> Iterator[Path]:
    """A GDR_HOME of the test's own, for an embedded Postgres of its own (outside pytest's 0700 tmp dir: postgres
    runs as another user when we are root), stopped and deleted after the test."""
    home = Path(tempfile.mkdtemp(prefix="gdr-test-cli-"))
    home.chmod(0o755)
    try:
        yield home
    finally:
        stop_embedded(Settings(_env_file=None, gdr_home=home))
        shutil.rmtree(home, ignore_errors=True)


# --- gdr db init | url | status | stop; seed-db --------------------------------------------------------------


@pytest.mark.parametrize("init", [["gdr", "db", "init"], ["seed-db"]], ids=["gdr-db-init", "seed-db"])
def test_db_commands_on_the_embedded_postgres(tmp_path: Path, embedded_home: Path, init: list[str]) -> None:
    episodes = tmp_path / "episodes.json"
    episodes.write_text(json.dumps(CATALOGUE))
    env = {"GDR_HOME": str(embedded_home), "EPISODES_FILE": str(episodes)}

    first = run(init, tmp_path, **env)
    assert first.returncode == 0, first.stderr
    assert first.stdout == (f"schema version {LATEST} (applied {', '.join(MIGRATIONS)}); "
                            f"2 catalogue episodes loaded from {episodes}")
    again = run(["gdr", "db", "init"], tmp_path, **env)
    assert again.stdout == f"schema version {LATEST} (up to date); 2 catalogue episodes loaded from {episodes}"

    url = run(["gdr", "db", "url"], tmp_path, **env).stdout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (LATEST,)
        assert conn.execute("SELECT episode_id, title, status FROM episodes ORDER BY 1").fetchall() == [
            ("N-1", "First", "pending"), ("N-2", "Second", "pending")]

    status = run(["gdr", "db", "status"], tmp_path, **env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"embedded Postgres at {embedded_home / 'pgdata'}; schema version {LATEST} ")
    assert table_rows(status.stdout) == {"episodes": 2, "segments": 0, "embeddings": 0, "embedding_models": 0,
                                         "provider_calls": 0}

    assert run(["gdr", "db", "stop"], tmp_path, **env).stdout == "stopped"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5).close()
    assert run(["gdr", "db", "stop"], tmp_path, **env).stdout == "not running"
    # Started again on first use, with everything still there.
    assert table_rows(run(["gdr", "db", "status"], tmp_path, **env).stdout)["episodes"] == 2

    external = run(["gdr", "db", "stop"], tmp_path, **env, DATABASE_URL=url)
    assert (external.returncode, external.stdout) == (1, "")
    assert external.stderr == "error: DATABASE_URL/DB_HOST is set: the external server is not ours to stop\n"


def buffer_cache_mb(url: str) -> int:
    with psycopg.connect(url) as conn:  # shared_buffers is counted in 8 kB blocks
        return conn.execute("SELECT setting::int * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers'").fetchone()[0]


def test_the_embedded_servers_buffer_cache_follows_the_setting_and_a_change_keeps_the_data(
        tmp_path: Path, embedded_home: Path) -> None:
    episodes = tmp_path / "episodes.json"
    episodes.write_text(json.dumps(CATALOGUE))
    env = {"GDR_HOME": str(embedded_home), "EPISODES_FILE": str(episodes)}
    # The library starts a new server with Postgres's default (128 MB); the first use restarts it as asked.
    assert run(["gdr", "db", "init"], tmp_path, **env, EMBEDDED_SHARED_BUFFERS_MB="64").returncode == 0
    url = run(["gdr", "db", "url"], tmp_path, **env, EMBEDDED_SHARED_BUFFERS_MB="64").stdout
    assert buffer_cache_mb(url) == 64
    pid = (embedded_home / "pgdata" / "postmaster.pid").read_text().split()[0]
    assert run(["gdr", "db", "url"], tmp_path, **env, EMBEDDED_SHARED_BUFFERS_MB="64").stdout == url
    assert (embedded_home / "pgdata" / "postmaster.pid").read_text().split()[0] == pid  # as asked: not restarted

    status = run(["gdr", "db", "status"], tmp_path, **env, EMBEDDED_SHARED_BUFFERS_MB="96")
    assert status.returncode == 0, status.stderr
    assert table_rows(status.stdout)["episodes"] == 2  # restarted with the new size, nothing lost
    assert buffer_cache_mb(url) == 96
    assert run(["gdr", "db", "url"], tmp_path, **env).returncode == 0
    assert buffer_cache_mb(url) == shared_buffers_mb(None)  # unset: a quarter of the RAM, from 128 MB up to 1 GB
    assert 128 <= shared_buffers_mb(None) <= 1024 and shared_buffers_mb(300) == 300

    bad = run(["gdr", "db", "status"], tmp_path, **env, EMBEDDED_SHARED_BUFFERS_MB="8", EMBEDDED_TCP_PORT="x")
    assert (bad.returncode, bad.stderr) == (1, "error: invalid settings (from the environment or .env): EMBEDDED_TCP_PORT: "
                                               "Input should be a valid integer, unable to parse string as an integer; "
                                               "EMBEDDED_SHARED_BUFFERS_MB: Input should be greater than or equal to 16\n")
    assert buffer_cache_mb(url) == shared_buffers_mb(None)  # a bad value leaves the server as it was


# --- prefect.yaml: the nightly schedule and one run at a time -----------------------------------------------


def test_db_init_and_status_with_no_server_listening_say_so_in_one_line(tmp_path: Path) -> None:
    from tests.support.builders import free_port

    url = f"postgresql://gdr:pw-unheard-3@127.0.0.1:{free_port()}/gdr"  # nothing listens there
    for command in (["gdr", "db", "init"], ["seed-db"], ["gdr", "db", "status"]):
        result = run(command, tmp_path, DATABASE_URL=url, GDR_HOME=str(tmp_path / "home"))
        assert (result.returncode, result.stdout) == (1, ""), command
        assert result.stderr.startswith('error: cannot connect to Postgres: connection failed: connection to server at '
                                        '"127.0.0.1", port '), (command, result.stderr)
        assert result.stderr.endswith("Connection refused\n") and result.stderr.count("\n") == 1, (command, result.stderr)
        assert "pw-unheard-3" not in result.stderr
