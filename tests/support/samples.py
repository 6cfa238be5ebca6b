"""The sample episodes stored from their ground-truth scripts (one chunk per turn, real MiniLM vectors): a
searchable archive in seconds, without transcribing (tests of search and of what serves it)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.sources.catalogue import load_catalogue
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.storage.schema import migrate
from tests.support.builders import segment
from tests.support.paths import REPO_ROOT

SAMPLES = REPO_ROOT / "data" / "samples"
LOCAL_MODEL = "local/all-MiniLM-L6-v2@384"


def sample_script(episode: int | str) -> dict[str, Any]:
    return json.loads((SAMPLES / f"GDR-{int(episode):03d}.script.json").read_text())


def store_sample_episodes(db: Database, embedder: Any) -> list[str]:
    """Register data/episodes.json and store each of its episodes' script turns with `embedder`'s vectors
    (a LocalMiniLMEmbedder); returns the stored ids. GDR-005 (the diarization episode) is not in the catalogue."""
    catalogue = load_catalogue(REPO_ROOT / "data" / "episodes.json")
    episode_store.sync_catalogue(db, catalogue)
    stored = []
    for path in sorted(SAMPLES.glob("*.script.json")):
        script = json.loads(path.read_text())
        episode_id = str(script["episode_id"])
        if episode_id not in {e.episode_id for e in catalogue}:
            continue
        segs = [segment(i, t["speaker_name"], t["start"], t["end"], t["text"], len(t["text"].split()))
                for i, t in enumerate(script["turns"])]
        segment_store.store_episode(db, episode_id, segs, model_id=LOCAL_MODEL, provider="local",
                                    model="all-MiniLM-L6-v2", vectors=embedder.embed([s.text for s in segs]).vectors,
                                    duration_seconds=script.get("duration") or max(s.end for s in segs))
        stored.append(episode_id)
    return stored


@contextmanager
def module_database(pg_server: str, home: Path, **settings_fields: Any) -> Iterator[tuple[Settings, Database]]:
    """A fresh migrated database shared by one module's read-only tests (the settings' folders under `home`
    unless `settings_fields` say otherwise), dropped after."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_server.replace("/postgres?", f"/{name}?")
    migrate(url)
    fields = {"database_url": url, "gdr_home": home / "home", "audio_dir": home / "audio",
              "episodes_file": home / "episodes.json", "transcripts_dir": home / "transcripts", **settings_fields}
    settings = Settings(_env_file=None, **fields)
    try:
        with Database.from_settings(settings) as db:
            yield settings, db
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def sample_archive(pg_server: str, home: Path) -> Iterator[Settings]:
    """A database of its own holding the sample episodes (data/audio as AUDIO_DIR, so their audio is served),
    for a module of tests of what reads it; the settings point at it."""
    from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMEmbedder

    with module_database(pg_server, home, audio_dir=REPO_ROOT / "data" / "audio") as (settings, db):
        store_sample_episodes(db, LocalMiniLMEmbedder())
        yield settings
