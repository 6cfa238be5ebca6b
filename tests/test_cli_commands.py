"""The commands and configuration a user types or edits that had no test (issue 18): `gdr db init | url | status |
stop` on the embedded Postgres, the legacy `seed-db`, the legacy DB_* variables read from a `.env`, `gdr format`'s
errors and out-dir, and the schedule and concurrency limit of `prefect.yaml` as the README states them.

Commands run as the user runs them: the installed entry points in a subprocess, with only PATH and HOME from this
environment (so nothing of the test session leaks in) and their own GDR_HOME."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.embedded import shared_buffers_mb, stop_embedded
from gent_disagreement_rag.storage.schema import _migration_files, latest_schema_version
from tests.conftest import REPO_ROOT
from tests.support.builders import deepgram_fixture

BIN = Path(sys.executable).parent
CATALOGUE = [{"episode_id": "N-1", "file_name": "N-1.mp3", "title": "First"},
             {"episode_id": "N-2", "file_name": "N-2.mp3", "title": "Second"}]
MIGRATIONS = [name for _, name, _ in _migration_files()]
LATEST = latest_schema_version()  # the highest number, not the count: numbers may leave gaps (0007, 0009)


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """An installed entry point (gdr, seed-db), as a user runs it; the output with its line wrapping undone."""
    result = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=cwd, capture_output=True, text=True,
                            timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env})
    result.stdout = " ".join(result.stdout.split())
    return result


def table_rows(output: str) -> dict[str, int]:
    """`gdr db status`'s row counts, from its table."""
    return {name: int(n) for name, n in re.findall(r"│ (\w+) +│ (\d+) +│", output)}


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


# --- the legacy DB_* variables, from a .env ------------------------------------------------------------------


def test_legacy_db_variables_in_a_dotenv_file_connect_to_the_server_they_name(tmp_path: Path, fresh_db_url: str) -> None:
    """No DATABASE_URL anywhere: `.env` in the working directory names the server the old way. The session's
    Postgres listens on a Unix socket only, so DB_HOST is its socket directory, as libpq (and psycopg2, which the
    old codebase used) accept."""
    parts = conninfo_to_dict(fresh_db_url)
    episodes = tmp_path / "episodes.json"
    episodes.write_text(json.dumps(CATALOGUE))
    (tmp_path / ".env").write_text(
        f"DB_HOST={parts['host']}\nDB_PORT={parts.get('port', 5432)}\nDB_USER={parts['user']}\n"
        f"DB_PASSWORD=pw-dotenv-7Hq2\nDB_NAME={parts['dbname']}\nEPISODES_FILE={episodes}\nGDR_HOME={tmp_path / 'home'}\n")
    try:
        init = run(["gdr", "db", "init"], tmp_path)
        assert init.returncode == 0, init.stderr
        assert init.stdout == f"schema version {LATEST} (up to date); 2 catalogue episodes loaded from {episodes}"
        with psycopg.connect(fresh_db_url) as conn:  # the database DB_NAME named, not another
            assert [r[0] for r in conn.execute("SELECT episode_id FROM episodes ORDER BY 1")] == ["N-1", "N-2"]
        status = run(["gdr", "db", "status"], tmp_path)
        assert status.stdout.startswith(f"external Postgres; schema version {LATEST} ")
        assert table_rows(status.stdout)["episodes"] == 2
        assert "pw-dotenv-7Hq2" not in init.stdout + init.stderr + status.stdout + status.stderr
    finally:  # had the variables been ignored, an embedded server would have been started under the cwd
        for home in (tmp_path / ".gdr", tmp_path / "home"):
            stop_embedded(Settings(_env_file=None, gdr_home=home))


# --- gdr format: out-dir and bad input -----------------------------------------------------------------------


def test_gdr_format_writes_into_the_out_dir_and_says_what_is_wrong_with_its_input(tmp_path: Path) -> None:
    """The chunking of `gdr format` is tested in test_regressions.py (Deepgram) and test_providers_local.py (Whisper);
    here the rest of the command."""
    raw = tmp_path / "ep.raw.json"
    shutil.copyfile(deepgram_fixture("nasa_eva_170s_3spk_nova2_utterances.json"), raw)
    out = tmp_path / "out"
    done = run(["gdr", "format", str(raw), "-o", str(out), "--speakers-map", '{"0": "Ann"}'], tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ep.chunks.json", "ep.md", "ep.raw.json", "ep.srt", "ep.vtt"]
    chunks = json.loads((out / "ep.chunks.json").read_text())
    assert done.stdout.startswith(f"{len(chunks)} chunks from {raw}") and len(chunks) > 1
    assert "Ann" in {c["speaker"] for c in chunks} and not (tmp_path / "ep.chunks.json").exists()

    (tmp_path / "bad.raw.json").write_text('{"results": ')
    for args, message in [
        ([str(tmp_path / "nothing.raw.json")], f"{tmp_path / 'nothing.raw.json'}: no such file"),
        ([str(tmp_path / "bad.raw.json")], f"{tmp_path / 'bad.raw.json'}: not valid JSON: Expecting value at line 1"),
        ([str(raw), "--speakers-map", "{0: Ann}"], "--speakers-map: not valid JSON: Expecting property name enclosed "
                                                   "in double quotes"),
        ([str(raw), "--speakers-map", '["Ann"]'], '--speakers-map: expected an object of names, like {"0": "Ann", '
                                                  '"1": "Bob"}'),
        ([str(raw), "--speakers-map", '{"speaker_1": "Ann"}'], "--speakers-map: key 'speaker_1' is not a speaker "
                                                               "number: keys are the transcriber's speaker numbers, "
                                                               'like {"0": "Ann", "1": "Bob"}'),
    ]:
        failed = run(["gdr", "format", *args], tmp_path)
        assert (failed.returncode, failed.stdout) == (1, ""), args
        assert " ".join(failed.stderr.split()) == f"error: {message}", args


# --- prefect.yaml: the nightly schedule and one run at a time -----------------------------------------------


def test_prefect_yaml_schedules_ingest_nightly_one_run_at_a_time_as_the_readme_says() -> None:
    from gent_disagreement_rag.orchestration.flows import ingest

    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    by_entrypoint = {d["entrypoint"]: d for d in config["deployments"]}
    assert set(by_entrypoint) == {"flows/ingest.py:ingest"}  # its episodes go to the task runner, not to deployments
    nightly = by_entrypoint["flows/ingest.py:ingest"]
    assert (nightly["name"], nightly["work_pool"]["name"], nightly["concurrency_limit"]) == ("default", "default", 1)
    [schedule] = nightly["schedules"]
    assert schedule == {"cron": "0 2 * * *", "timezone": "America/New_York", "active": True}
    assert nightly["parameters"] == {"episode_ids": None, "max_parallel": None, "force": False}
    assert ingest.timeout_seconds == 23 * 3600

    minute, hour, *every = schedule["cron"].split()
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    assert every == ["*", "*", "*"]  # every day
    assert (f"`ingest/default` runs nightly at {int(hour):02d}:{int(minute):02d} {schedule['timezone']}" in readme
            and f"`concurrency_limit: {nightly['concurrency_limit']}`" in readme and "23-hour timeout" in readme)


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
