"""Settings changes reach every episode: a plain `gdr ingest` re-chunks / re-embeds what the current chunker
and embedding model would make differently, from cached transcripts, and `gdr status` says which and why."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gent_disagreement_rag.cli import app
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import run_ingest, tone_catalogue
from tests.support.fakeapi import EMBEDDINGS, LISTEN, FakeAPI

LOCAL = "local/all-MiniLM-L6-v2@384"
OPENAI = "openai/text-embedding-3-small@1536"


@pytest.fixture
def two_episodes(settings: Settings, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch, prefect_api) -> list[str]:
    return tone_catalogue(settings, fake_api, monkeypatch, {f"ST-{i}": (20 + i, 300 + 60 * i) for i in range(2)},
                          {"0": "Ann", "1": "Bob"})


def stale(settings: Settings) -> dict[str, str | None]:
    """`gdr status --json`'s stale field per episode."""
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    return {e["episode_id"]: e["stale"] for e in json.loads(result.stdout)["episodes"]}


def model_ids(settings: Settings) -> dict[str, tuple[str, ...]]:
    with Database.from_settings(settings) as db:
        return {e.episode_id: e.model_ids for e in episode_store.list_episodes(db)}


def test_a_new_embedder_re_embeds_every_episode_without_transcribing(settings, two_episodes, fake_api, monkeypatch) -> None:
    monkeypatch.setenv("EMBEDDER", "local")
    assert run_ingest().is_completed()
    assert len(fake_api.requests_to(LISTEN)) == 2 and not fake_api.requests_to(EMBEDDINGS)
    assert stale(settings) == {"ST-0": None, "ST-1": None}

    monkeypatch.setenv("EMBEDDER", "openai")  # the fake server's key and base URL are already set
    reason = f"embedded with {LOCAL}, settings want {OPENAI}"
    assert stale(settings) == {"ST-0": reason, "ST-1": reason}
    assert run_ingest().is_completed()  # a plain run: no --force, no episode named
    assert len(fake_api.requests_to(LISTEN)) == 2  # no transcription request: the transcripts came from cache
    assert len(fake_api.requests_to(EMBEDDINGS)) == 2
    assert model_ids(settings) == {"ST-0": (LOCAL, OPENAI), "ST-1": (LOCAL, OPENAI)}
    assert stale(settings) == {"ST-0": None, "ST-1": None}

    monkeypatch.setenv("EMBEDDER", "local")  # back: the local vectors are still there, nothing to do
    assert stale(settings) == {"ST-0": None, "ST-1": None}


def test_a_new_chunk_budget_re_chunks_every_episode_without_transcribing(settings, two_episodes, fake_api, monkeypatch) -> None:
    assert run_ingest().is_completed()
    with Database.from_settings(settings) as db:
        before = {e.episode_id: e.segments for e in episode_store.list_episodes(db)}
    requests = len(fake_api.requests_to(LISTEN))

    monkeypatch.setenv("CHUNK_MAX_TOKENS", "40")
    reason = f"chunked with max_tokens {Settings.model_fields['chunk_max_tokens'].default}, settings want 40"
    assert stale(settings) == {"ST-0": reason, "ST-1": reason}
    assert run_ingest().is_completed()
    assert len(fake_api.requests_to(LISTEN)) == requests
    with Database.from_settings(settings) as db:
        after = {e.episode_id: e.segments for e in episode_store.list_episodes(db)}
    assert all(after[e] > before[e] for e in before), (before, after)
    assert stale(settings) == {"ST-0": None, "ST-1": None}
    result = CliRunner().invoke(app, ["ingest"])
    assert result.exit_code == 0 and "nothing to do: 2 episodes up to date" in result.output


def test_episodes_stored_before_the_config_was_recorded_are_judged_by_their_vectors(settings, two_episodes, monkeypatch) -> None:
    assert run_ingest().is_completed()
    with Database.from_settings(settings) as db, db.connection() as conn:
        conn.execute("UPDATE episodes SET segments_config = NULL")
    monkeypatch.setenv("CHUNK_MAX_TOKENS", "40")  # unknown what made them: not re-chunked (the cache may be gone)
    assert stale(settings) == {"ST-0": None, "ST-1": None}
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "512")
    assert stale(settings)["ST-0"] == f"embedded with {OPENAI}, settings want openai/text-embedding-3-small@512"


def test_a_new_voice_naming_threshold_names_map_less_episodes_again_without_transcribing(
        settings, fake_api, monkeypatch, prefect_api) -> None:
    from gent_disagreement_rag.providers.transcribers import voices

    tone_catalogue(settings, fake_api, monkeypatch, {f"NV-{i}": (20 + i, 300 + 60 * i) for i in range(2)}, {})
    assert run_ingest().is_completed()
    assert stale(settings) == {"NV-0": None, "NV-1": None}
    requests = len(fake_api.requests_to(LISTEN))

    monkeypatch.setattr(voices, "SAME_PERSON", 0.95)
    found = stale(settings)
    assert all(reason and reason.startswith("speakers named by voice with ") and '"same_person": 0.95' in reason
               for reason in found.values()), found
    assert run_ingest().is_completed()
    assert len(fake_api.requests_to(LISTEN)) == requests  # named again from the cached transcripts
    assert stale(settings) == {"NV-0": None, "NV-1": None}
