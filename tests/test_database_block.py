"""DATABASE_BLOCK names the database of every command, not only of deployment runs: a prefect-sqlalchemy
SqlAlchemyConnector block on a real Prefect server, pointing at a Postgres other than the embedded one, is what
`gdr status` and `gdr search` read (the embedded server is never started); a block the server does not have, or
no server to ask, is one clear line naming DATABASE_BLOCK; storage, which reads plain URLs only, refuses a block
it was handed unread.

Commands run as a user runs them: the installed entry point in a subprocess, with only PATH and HOME from this
environment and their own GDR_HOME."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import make_url

from gent_disagreement_rag.errors import ConfigError
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.sources.catalogue import load_catalogue
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import segment

BIN = Path(sys.executable).parent
CATALOGUE = [{"episode_id": "B-1", "file_name": "B-1.mp3", "title": "Held in the block's database"}]
TURNS = [("Ann", "Tariffs on steel raise the price of cars."), ("Bob", "Only if the carmakers pass the cost on.")]


def gdr(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "gdr"), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env})


def save_block(url: str) -> str:
    """A SqlAlchemyConnector block for the database at `url`, on the test session's Prefect server; its name."""
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector

    parts = make_url(url)
    name = "test-db-" + uuid.uuid4().hex[:8]
    SqlAlchemyConnector(connection_info=ConnectionComponents(
        driver="postgresql+psycopg", database=parts.database, username=parts.username, password=parts.password,
        host=parts.host, port=parts.port, query=dict(parts.query))).save(name)
    return name


def test_status_and_search_read_the_database_the_block_names(tmp_path: Path, settings: Settings,
                                                             prefect_api: str) -> None:
    catalogue = tmp_path / "episodes.json"
    catalogue.write_text(json.dumps(CATALOGUE))
    with Database.from_settings(settings) as db:
        episode_store.sync_catalogue(db, load_catalogue(catalogue))
        segs = [segment(i, speaker, 10.0 * i, 10.0 * i + 9, text, len(text.split()))
                for i, (speaker, text) in enumerate(TURNS)]
        vectors = np.random.default_rng(25).standard_normal((len(segs), 384)).astype(np.float32)
        segment_store.store_episode(db, "B-1", segs, model_id="local/all-MiniLM-L6-v2@384", provider="local",
                                    model="all-MiniLM-L6-v2", vectors=vectors, duration_seconds=20.0)
    block = save_block(settings.database_url.get_secret_value())
    home = tmp_path / "home"  # the embedded server would live here
    env = {"GDR_HOME": str(home), "EPISODES_FILE": str(catalogue), "DATABASE_BLOCK": block,
           "PREFECT_API_URL": prefect_api}

    status = gdr(["status", "--json"], tmp_path, **env)
    assert status.returncode == 0, status.stderr
    assert [(e["episode_id"], e["status"], e["segments"]) for e in json.loads(status.stdout)["episodes"]] == [
        ("B-1", "processed", 2)]

    search = gdr(["search", "steel tariffs", "--mode", "text", "--json"], tmp_path, **env)
    assert search.returncode == 0, search.stderr
    hits = json.loads(search.stdout)["results"]
    assert hits and hits[0]["episode_id"] == "B-1" and "steel" in hits[0]["text"]

    assert not (home / "pgdata").exists()  # the embedded Postgres was never started


@pytest.mark.parametrize("with_server", [True, False], ids=["no-such-block", "no-prefect-api-url"])
def test_a_block_that_cannot_be_read_is_one_line_naming_database_block(tmp_path: Path, prefect_api: str,
                                                                       with_server: bool) -> None:
    env = {"GDR_HOME": str(tmp_path / "home"), "DATABASE_BLOCK": "no-such-block"}
    if with_server:
        env["PREFECT_API_URL"] = prefect_api
    for command in (["status"], ["search", "anything"]) if with_server else (["status"],):
        result = gdr(command, tmp_path, **env)
        assert (result.returncode, result.stdout) == (1, ""), (command, result.stderr)
        assert result.stderr.startswith("error: DATABASE_BLOCK=no-such-block") and result.stderr.count("\n") == 1, (
            command, result.stderr)
        assert ("has no SqlAlchemyConnector block of that name" if with_server else "PREFECT_API_URL is not set") \
            in result.stderr
    assert not (tmp_path / "home" / "pgdata").exists()


def test_storage_refuses_a_block_it_was_handed_unread(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, gdr_home=tmp_path / "home", database_block="gdr-database")
    assert not settings.uses_embedded_postgres
    with pytest.raises(ConfigError, match="^DATABASE_BLOCK=gdr-database names a Prefect block"):
        Database.from_settings(settings)
    assert not (tmp_path / "home" / "pgdata").exists()
