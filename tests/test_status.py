"""`gdr status` reads and never writes: it lists the catalogue's entries the database does not know yet as
pending, without registering them, and works on a connection where every transaction is read-only.

A real `gdr` in a subprocess, on a real Postgres; a write of any kind (a row, a migration's DDL) is refused by
Postgres itself, and the rows are compared before and after."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg

from gent_disagreement_rag.sources.catalogue import load_catalogue
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from tests.support.world import GDR

ENTRIES = [{"episode_id": f"S-{i}", "file_name": f"S-{i}.mp3", "title": f"Show {i}"} for i in range(3)]


def read_only(url: str) -> str:
    """The same database, every transaction of the connection read-only (Postgres refuses any write)."""
    return url + ("&" if "?" in url else "?") + "options=" + quote("-c default_transaction_read_only=on")


def snapshot(url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as conn:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("episodes", "schema_migrations", "chat.episode_numbers")}


def test_gdr_status_lists_unregistered_entries_as_pending_and_writes_nothing(tmp_path: Path, fresh_db_url: str,
                                                                             db: Database) -> None:
    catalogue = tmp_path / "episodes.json"
    catalogue.write_text(json.dumps(ENTRIES))
    episode_store.sync_catalogue(db, load_catalogue(catalogue)[:1])  # S-0 registered; S-1, S-2 only in the file
    before = snapshot(fresh_db_url)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
           "DATABASE_URL": read_only(fresh_db_url), "EPISODES_FILE": str(catalogue), "GDR_HOME": str(tmp_path / "home")}

    result = subprocess.run([str(GDR), "status", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 0, result.stderr
    listed = {e["episode_id"]: e["status"] for e in json.loads(result.stdout)["episodes"]}
    assert listed == {"S-0": "pending", "S-1": "pending", "S-2": "pending"}
    assert snapshot(fresh_db_url) == before
