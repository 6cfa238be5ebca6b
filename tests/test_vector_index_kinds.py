"""A model past `vector`'s 2,000-dimension index limit (text-embedding-3-large's 3,072) is stored, indexed over
`embedding::halfvec(D)` and searched through that index with full-precision scores; a 1536-d model keeps its
`vector` index (the chat views' contract). `gdr db reindex` builds a model's index after a bulk load while searches
go on, and a reindex killed at start or mid-build leaves search answering from the old index and the next reindex
finishing.

Vectors are the fake OpenAI server's (tests/support/fakeapi.py): the query's vector is what the real SDK gets back
for the query, and each stored chunk is a known mixture of it and of another text's vector, so the exact ranking and
scores are known."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from gent_disagreement_rag.providers.embedders import model_id
from gent_disagreement_rag.search import engine, search, statements
from gent_disagreement_rag.search.assembly import assemble
from gent_disagreement_rag.search.types import Mode
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.sources.catalogue import CatalogueEntry
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.storage.vector_index import IndexKind, create_sql
from tests.support.builders import app_environment, segment
from tests.support.fakeapi import FakeAPI, fake_embedding
from tests.support.waiting import wait_for

BIN = Path(sys.executable).parent
QUERY = "tariffs on steel and the price of cars"
K = 10


def openai_settings(settings: Settings, fake_api: FakeAPI, model: str, dims: int) -> Settings:
    fields = settings.model_dump(include={"database_url", "gdr_home", "episodes_file", "audio_dir", "transcripts_dir"})
    return Settings(_env_file=None, **fields, embedder="openai", embedding_model=model, embedding_dimensions=dims,
                    **fake_api.settings_fields())


def store_corpus(db: Database, model: str, dims: int, episodes: int, chunks: int) -> dict[tuple[str, int], float]:
    """`episodes` x `chunks` chunks whose vectors mix the query's with other texts' in known shares; their exact
    cosine similarity to the query, by (episode, position). The model's index is dropped after the first episode
    and built by `gdr db reindex` (or the caller): the row-by-row upkeep of a 3,072-d graph is slow."""
    rng = np.random.default_rng(dims)
    q = fake_embedding(QUERY, dims)
    mid = model_id("openai", model, dims)
    episode_store.sync_catalogue(db, [CatalogueEntry(episode_id=f"H{e}", title=f"Half {e}", file_name=f"H{e}.mp3")
                                      for e in range(episodes)])
    shares = rng.permutation(np.linspace(0.05, 0.95, episodes * chunks))
    exact: dict[tuple[str, int], float] = {}
    for e in range(episodes):
        segs, vectors = [], []
        for p in range(chunks):
            other = fake_embedding(f"other text {e}.{p}", dims)
            other -= (other @ q) * q
            share = shares[e * chunks + p]
            v = share * q + np.sqrt(1 - share**2) * other / np.linalg.norm(other)
            vectors.append(v.astype(np.float32))
            segs.append(segment(p, "Ann" if p % 2 else "Bob", 10.0 * p, 10.0 * p + 9, f"Chunk {e}.{p} about trade.", 6))
        segment_store.store_episode(db, f"H{e}", segs, model_id=mid, provider="openai", model=model,
                                    vectors=np.array(vectors))
        for p, v in enumerate(vectors):
            exact[f"H{e}", p] = float(v @ q / np.linalg.norm(v))
        if e == 0:
            with db.connection() as conn:
                conn.execute(f"DROP INDEX {segment_store.index_name(mid)}")
    return exact


def best(exact: dict[tuple[str, int], float]) -> list[tuple[str, int]]:
    return sorted(exact, key=lambda key: -exact[key])[:K]


def model_indexes(db: Database, mid: str) -> list[str]:
    with db.connection() as conn:
        return [row[0] for row in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'embeddings' AND indexdef LIKE '%%hnsw%%' "
            "AND indexdef LIKE %s", (f"%{mid}%",))]


def index_kind(db: Database, mid: str) -> str:
    with db.connection() as conn:
        return str(conn.execute("SELECT index_kind FROM embedding_models WHERE model_id = %s", (mid,)).fetchone()[0])


def reindex(settings: Settings, fake_api: FakeAPI, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "gdr"), "db", "reindex"], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **app_environment(settings, fake_api)})


def assert_exact(settings: Settings, db: Database, exact: dict[tuple[str, int], float]) -> None:
    hits = search(QUERY, K, mode="vector", settings=settings, db=db)
    assert [(h.episode_id, h.position) for h in hits] == best(exact)
    assert all(h.vector_score == pytest.approx(exact[h.episode_id, h.position], abs=1e-6) for h in hits)


@pytest.mark.parametrize(("model", "dims", "kind"), [("text-embedding-3-small", 1536, IndexKind.VECTOR),
                                                     ("text-embedding-3-large", 3072, IndexKind.HALFVEC)])
def test_each_model_is_indexed_in_its_kind_and_walked_through_it(settings: Settings, fake_api: FakeAPI,
                                                                 tmp_path: Path, model: str, dims: int,
                                                                 kind: IndexKind) -> None:
    settings = openai_settings(settings, fake_api, model, dims)
    mid = model_id("openai", model, dims)
    with Database.from_settings(settings) as db:
        exact = store_corpus(db, model, dims, episodes=3, chunks=60)
        done = reindex(settings, fake_api, tmp_path)
        out, _ = done.communicate(timeout=300)
        assert done.returncode == 0, out
        assert f"{mid}: HNSW index over 180 vectors rebuilt as {kind}" in " ".join(out.split())
        [definition] = model_indexes(db, mid)
        assert f"{kind}({dims})" in definition and f"{kind}_cosine_ops" in definition
        assert index_kind(db, mid) == kind
        # What the user sees: the exact top 10, with full-precision scores (not half precision's ~1e-3).
        assert_exact(settings, db, exact)
        # And the graph walk itself: with the other plans off, the statement runs on the model's index and finds
        # the same ten.
        request = engine._validate(QUERY, K, episode=None, speaker=None, since=None, mode="vector", context=0,
                                   model_id=None)
        with db.connection() as conn:
            prepared = engine.Searcher(settings, db)._prepare(conn, request)
            walk = statements.build_sql(Mode.vector, prepared.model, request.filters, exact=False)
            statements.scan_settings(conn)
            for scan in ("seqscan", "bitmapscan", "sort"):  # too few rows for the planner to walk a graph unasked
                conn.execute(f"SET enable_{scan} = off")
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + walk, prepared.params, prepare=False))
            walks_the_index = f"Index Scan using {segment_store.index_name(mid)} on embeddings" in plan
            assert walks_the_index, [line for line in plan.splitlines() if "Scan" in line]
            rows = conn.cursor(row_factory=statements.search_row).execute(walk, prepared.params,
                                                                          prepare=False).fetchall()
        hits = assemble(rows, K, 0, settings.audio_dir.resolve())
        assert [(h.episode_id, h.position) for h in hits] == best(exact)


def indexed(db: Database, mid: str, dims: int) -> None:
    """The model's index as the store makes it (after store_corpus dropped it)."""
    with db.connection() as conn:
        conn.execute(create_sql(segment_store.index_name(mid), mid, dims, IndexKind.VECTOR))


def test_reindex_builds_after_a_bulk_load_while_searches_go_on(settings: Settings, fake_api: FakeAPI,
                                                               tmp_path: Path) -> None:
    model, dims = "text-embedding-3-small", 1536
    settings = openai_settings(settings, fake_api, model, dims)
    mid = model_id("openai", model, dims)
    with Database.from_settings(settings) as db:
        exact = store_corpus(db, model, dims, episodes=20, chunks=100)
        assert model_indexes(db, mid) == []
        assert_exact(settings, db, exact)
        answered, failures, stop = [0], [], threading.Event()

        def searcher() -> None:
            while not stop.is_set():
                try:
                    assert_exact(settings, db, exact)
                    answered[0] += 1
                except Exception as exc:  # noqa: BLE001 - any failure during the build is the finding
                    failures.append(repr(exc))

        thread = threading.Thread(target=searcher)
        thread.start()
        try:
            wait_for(lambda: answered[0] >= 1, what="a search before the build")
            before = answered[0]
            done = reindex(settings, fake_api, tmp_path)
            out, _ = done.communicate(timeout=600)
            wait_for(lambda: answered[0] >= before + 3, what="searches after the build")
        finally:
            stop.set()
            thread.join()
        assert done.returncode == 0, out
        assert f"{mid}: HNSW index over 2,000 vectors rebuilt as vector" in " ".join(out.split())
        assert not failures, failures[:3]
        [definition] = model_indexes(db, mid)
        assert "vector(1536)" in definition and index_kind(db, mid) == IndexKind.VECTOR


def build_in_progress(db: Database) -> bool:
    with db.connection() as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_progress_create_index").fetchone()[0] > 0


def new_index_built(db: Database, mid: str) -> bool:
    """The rebuild's new index is complete (valid), under its building name or already swapped in."""
    with db.connection() as conn:
        return bool(conn.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indisvalid "
            "AND c.relname = %s", (segment_store.index_name(mid) + "_new",)).fetchone()[0])


@pytest.mark.parametrize("moment", ["at start", "while the graph is built", "once the new index is built"])
def test_a_killed_reindex_leaves_search_answering_and_the_next_one_finishes(settings: Settings, fake_api: FakeAPI,
                                                                           tmp_path: Path, moment: str) -> None:
    model, dims = "text-embedding-3-small", 1536
    settings = openai_settings(settings, fake_api, model, dims)
    mid = model_id("openai", model, dims)
    with Database.from_settings(settings) as db:
        exact = store_corpus(db, model, dims, episodes=30, chunks=100)
        indexed(db, mid, dims)
        killed = reindex(settings, fake_api, tmp_path)
        if moment == "while the graph is built":
            wait_for(lambda: build_in_progress(db), timeout=300, what="the index build to start")
        elif moment == "once the new index is built":  # before or during the swap; or, at worst, just after it
            wait_for(lambda: new_index_built(db, mid) or killed.poll() is not None, timeout=300,
                     what="the new index to be complete")
        if killed.poll() is None:
            os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
        assert killed.returncode == -signal.SIGKILL or moment == "once the new index is built"
        assert_exact(settings, db, exact)  # the old index (or a sequential scan) answers, as before
        done = reindex(settings, fake_api, tmp_path)
        out, _ = done.communicate(timeout=600)
        assert done.returncode == 0, out
        [definition] = model_indexes(db, mid)
        assert "vector(1536)" in definition and index_kind(db, mid) == IndexKind.VECTOR
        with db.connection() as conn:
            invalid = conn.execute("SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                   "WHERE NOT i.indisvalid AND c.relname LIKE 'embeddings_hnsw_%%'").fetchone()[0]
        assert invalid == 0
        assert_exact(settings, db, exact)
