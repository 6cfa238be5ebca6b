"""An episode processed again: changed audio replaces its old rows, a failed reprocess keeps the old version
searchable, a reader during a replace sees the whole old or the whole new version.

Real parts throughout: Postgres, Prefect runs on the session's test server, the Deepgram/OpenAI SDKs against
tests/support/fakeapi.py.
"""

from __future__ import annotations

import threading
from collections import Counter

import psycopg
import pytest

from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMEmbedder
from gent_disagreement_rag.search import search
from gent_disagreement_rag.search.engine import Searcher
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.sources.catalogue import CatalogueEntry
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import make_audio, run_ingest, segment, tone_catalogue
from tests.support.fakeapi import (
    LISTEN,
    FakeAPI,
    deepgram_error,
    deepgram_response,
    for_audio,
    sha256_of,
)
from tests.support.waiting import Chaos, wait_for
from tests.support.world import World, make_tones, run_flow, stored_texts, truncated_transcript

LOCAL_MODEL = "local/all-MiniLM-L6-v2@384"


# --- a failed reprocess keeps the old version searchable --------------------------------------------------


@pytest.mark.parametrize("failure", ["deepgram-400", "quality-gate"])
def test_a_failed_reprocess_keeps_the_old_version_searchable(settings, fake_api: FakeAPI, monkeypatch, prefect_api,
                                                              failure: str) -> None:
    [episode] = tone_catalogue(settings, fake_api, monkeypatch, {"C-0": (3, 440)})
    audio = settings.audio_dir / "C-0.mp3"
    fake_api.add_audio(audio, response=deepgram_response(
        [(0, "oldversion of the beekeeping talk " * 6), (1, "oldversion replies about hives " * 6)], duration=3.0))
    assert run_ingest().is_completed()
    old = stored_texts(settings, episode)
    assert len(old) >= 2 and all("oldversion" in t for t in old)

    make_audio(audio, 5, 880)  # a new edit of the episode; its processing fails
    if failure == "deepgram-400":
        fake_api.enqueue(LISTEN, deepgram_error(400, "Bad Request", "corrupt or unsupported data"), when=for_audio(audio))
    else:
        fake_api.add_audio(audio, response=truncated_transcript("newversion words " * 10, 50.0, 100.0))
    assert run_ingest().is_failed()

    with Database.from_settings(settings) as db:
        [row] = episode_store.list_episodes(db)
    assert row.status == "failed" and row.last_error.startswith(
        "PermanentProviderError: " if failure == "deepgram-400" else "QualityGateError: "), row.last_error
    assert stored_texts(settings, episode) == old
    for mode in ("vector", "text", "hybrid"):
        hits = search("oldversion", 50, episode=episode, mode=mode, settings=Settings(_env_file=None))
        assert sorted(h.text for h in hits) == sorted(old), mode


# --- a reader during a replace -------------------------------------------------------------------------------


def waiting_copies(url: str) -> int:
    """Sessions on the database blocked on a lock in their `COPY embeddings`."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock' AND query LIKE 'COPY embeddings%'").fetchone()[0]


def test_a_reader_during_a_replace_sees_the_whole_old_or_the_whole_new_version(db: Database, settings) -> None:
    """The replace is held open at its embeddings COPY (its old rows deleted, the new segments copied, nothing
    committed) by a lock on the model's row; readers meanwhile, and all along, see one version entire."""
    embedder = LocalMiniLMEmbedder()
    episode_store.sync_catalogue(db, [CatalogueEntry(episode_id="R", file_name="R.mp3")])
    versions = {
        "old": [f"old take {i}: the honeybee colony clusters to keep warm" for i in range(5)],
        "new": [f"new take {i}: a varroa mite census by sugar roll" for i in range(8)],
    }

    def store(version: str) -> None:
        texts = versions[version]
        segs = [segment(i, "Host", i * 10.0, i * 10.0 + 9, t, 12) for i, t in enumerate(texts)]
        segment_store.store_episode(db, "R", segs, model_id=LOCAL_MODEL, provider="local", model="all-MiniLM-L6-v2",
                                    vectors=embedder.embed(texts).vectors)

    store("old")
    searcher = Searcher(settings, db)
    url = settings.external_database_url()

    def seen() -> dict[str, tuple[str, ...]]:
        """What a search and a plain read of the episode return now, each as the sorted texts."""
        hits = searcher.search("honeybee colony or varroa mite", 50, episode="R", mode="vector")
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT s.text, count(e.position) FROM segments s LEFT JOIN embeddings e "
                                "USING (episode_id, position) WHERE s.episode_id = 'R' GROUP BY s.text").fetchall()
        assert all(n == 1 for _, n in rows), rows  # every segment has its vector
        return {"search": tuple(sorted(h.text for h in hits)), "read": tuple(sorted(t for t, _ in rows))}

    whole = {tuple(sorted(texts)): version for version, texts in versions.items()}
    observations: list[dict[str, tuple[str, ...]]] = []
    done = threading.Event()

    def keep_reading() -> None:
        while not done.is_set():
            observations.append(seen())
        observations.append(seen())

    locker = psycopg.connect(url)
    locker.execute("SELECT 1 FROM embedding_models WHERE model_id = %s FOR UPDATE", (LOCAL_MODEL,))
    writer = Chaos(lambda: store("new"))
    reader = Chaos(keep_reading)
    try:
        wait_for(lambda: waiting_copies(url) == 1, what="the replace to be held at its COPY")
        during = seen()
        wait_for(lambda: len(observations) >= 3, what="the reader to read while the replace is held")
        held_reads = len(observations)
    finally:
        locker.rollback()
        locker.close()
    writer.join()
    done.set()
    reader.join()

    assert {whole.get(v) for v in during.values()} == {"old"}, during
    after = seen()
    assert {whole.get(v) for v in after.values()} == {"new"}, after
    assert held_reads >= 1 and len(observations) > held_reads
    assert {whole.get(v) for o in observations for v in o.values()} <= {"old", "new"}, [
        o for o in observations if {whole.get(v) for v in o.values()} - {"old", "new"}]


# --- the cost ledger and the ingest-summary artifact of a real run -----------------------------------------


def test_changed_audio_is_processed_again_and_its_old_rows_replaced(world: World) -> None:
    world.catalogue(["C-0", "C-1"], seconds=3)
    old = world.audio("C-0").read_bytes()
    world.api.add_audio(old, response=deepgram_response([(0, "oldversion " * 12), (1, "oldversion " * 12)], duration=3.0))
    assert run_flow().is_completed()
    before = world.rows()["C-0"]

    make_tones([(world.audio("C-0"), 5, 880)])  # the file is replaced by a new edit
    new = world.audio("C-0").read_bytes()
    world.api.add_audio(new, response=deepgram_response([(1, "newversion " * 30)], duration=5.0))
    assert run_flow().is_completed()

    after = world.rows()["C-0"]
    uploads = Counter(sha256_of(r.body) for r in world.api.requests_to(LISTEN))
    assert uploads == {sha256_of(old): 1, sha256_of(new): 1, sha256_of(world.audio("C-1")): 1}  # C-1 not again
    assert after.processed_sha256 == sha256_of(new) != before.processed_sha256
    texts = [t for (t,) in world.sql("SELECT text FROM segments WHERE episode_id = 'C-0'")]
    assert texts and all("newversion" in t and "oldversion" not in t for t in texts)
    assert after.duration_seconds == 5.0
    world.assert_consistent()
