"""Storage against a real embedded Postgres + pgvector."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gent_disagreement_rag.errors import CatalogueError, DatabaseUnavailableError
from gent_disagreement_rag.sources.catalogue import CatalogueEntry, load_catalogue
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.storage.schema import latest_schema_version, migrate, schema_version
from gent_disagreement_rag.text.chunking import Chunk
from tests.support.builders import segment


def segments(n: int, tag: str = "v1") -> list[Chunk]:
    return [segment(i, f"Speaker {i % 2}", i * 10.0, i * 10.0 + 9.5, f"{tag} segment {i} about topic {i}", 7) for i in range(n)]


def vectors(n: int, dims: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dims)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_episodes(db: Database, ids: list[str]) -> None:
    episode_store.sync_catalogue(db, [CatalogueEntry(episode_id=i, file_name=f"{i}.mp3") for i in ids])


def put(db: Database, episode_id: str, segs: list[Chunk], dims: int = 384, seed: int = 0, model: str = "m") -> None:
    segment_store.store_episode(
        db, episode_id, segs, model_id=f"test/{model}@{dims}", provider="test", model=model,
        vectors=vectors(len(segs), dims, seed), audio_sha256="abc",
    )


def rows(db: Database, episode_id: str) -> list[tuple]:
    with db.connection() as conn:
        return conn.execute(
            "SELECT s.position, s.text, e.model_id FROM segments s LEFT JOIN embeddings e USING (episode_id, position) "
            "WHERE s.episode_id = %s ORDER BY s.position, e.model_id",
            (episode_id,),
        ).fetchall()


def test_schema_init_is_idempotent(fresh_db_url: str) -> None:
    assert migrate(fresh_db_url) == []
    assert migrate(fresh_db_url) == []
    with Database(fresh_db_url, max_size=1) as db:
        db.open()
        with db.connection() as conn:
            assert schema_version(conn) == latest_schema_version() >= 1


def test_rerun_replaces_rows_without_duplicates(db: Database) -> None:
    add_episodes(db, ["e1"])
    put(db, "e1", segments(5))
    put(db, "e1", segments(5))
    put(db, "e1", segments(3, "v2"))
    got = rows(db, "e1")
    assert [r[1] for r in got] == [s.text for s in segments(3, "v2")]
    [episode] = episode_store.list_episodes(db, ["e1"])
    assert episode.status == "processed" and episode.segments == 3


def test_failure_mid_write_keeps_previous_version(db: Database) -> None:
    add_episodes(db, ["e1"])
    put(db, "e1", segments(4))
    before = rows(db, "e1")
    bad = vectors(6, 384)
    bad[5, 0] = np.nan  # pgvector rejects NaN: the COPY of embeddings fails after segments were rewritten
    with pytest.raises(Exception, match="NaN"):
        segment_store.store_episode(db, "e1", segments(6, "v2"), model_id="test/m@384", provider="test", model="m", vectors=bad)
    assert rows(db, "e1") == before
    assert episode_store.list_episodes(db, ["e1"])[0].segments == 4


def test_sixteen_threads_thirty_two_episodes_pool_of_four(settings) -> None:
    with Database(settings.external_database_url(), max_size=4, timeout=60) as db:
        db.open()
        ids = [f"ep{i:02d}" for i in range(32)]
        add_episodes(db, ids)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: put(db, ids[i], segments(10 + i), seed=i), range(32)))
        counts = episode_store.table_counts(db)
        assert counts["segments"] == sum(10 + i for i in range(32))
        assert counts["embeddings"] == counts["segments"]
        assert all(e.status == "processed" for e in episode_store.list_episodes(db))
        assert db.pool.get_stats()["pool_size"] <= 4


def test_concurrent_writers_of_one_episode_do_not_interleave(db: Database) -> None:
    add_episodes(db, ["e1"])
    versions = {f"w{i}": segments(20 + i, f"w{i}") for i in range(6)}
    barrier = threading.Barrier(6)

    def write(tag: str) -> None:
        barrier.wait()
        put(db, "e1", versions[tag])

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(write, versions))
    texts = [r[1] for r in rows(db, "e1")]
    assert any(texts == [s.text for s in v] for v in versions.values())


def test_two_models_with_different_dimensions_coexist_and_use_their_index(db: Database) -> None:
    add_episodes(db, ["e1", "e2"])
    for ep in ("e1", "e2"):
        put(db, ep, segments(50), dims=384, model="small")
        put(db, ep, segments(50), dims=1536, model="large")
    assert rows(db, "e1")[0][2:] == ("test/large@1536",) and len(rows(db, "e1")) == 100
    models = {m: (d, n) for m, d, n in segment_store.embedding_model_counts(db)}
    assert models == {"test/small@384": (384, 100), "test/large@1536": (1536, 100)}
    with db.connection() as conn:
        conn.execute("SET enable_seqscan = off")
        for model_id, dims in models.items():
            dim = dims[0]
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    f"EXPLAIN SELECT episode_id, position FROM embeddings WHERE model_id = %s "
                    f"ORDER BY embedding::vector({dim}) <=> %s::vector({dim}) LIMIT 5",
                    (model_id, vectors(1, dim)[0].tolist()),
                )
            )
            assert segment_store.index_name(model_id) in plan, plan
    # Re-chunked segments invalidate every model's vectors of that episode, not other episodes'.
    put(db, "e1", segments(10, "v2"), dims=384, model="small")
    models = {m: n for m, _, n in segment_store.embedding_model_counts(db)}
    assert models == {"test/small@384": 60, "test/large@1536": 50}


def test_pool_exhaustion_waits_then_fails_clearly(fresh_db_url: str) -> None:
    with Database(fresh_db_url, max_size=1, timeout=0.5) as db:
        db.open()
        with db.connection():
            with pytest.raises(DatabaseUnavailableError, match="no database connection free"):
                with db.connection():
                    pass


@pytest.mark.fast
def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    from gent_disagreement_rag.settings import Settings

    bad = Settings(_env_file=None, database_url="postgresql://nobody@127.0.0.1:1/none", gdr_home=tmp_path)
    with pytest.raises(DatabaseUnavailableError, match="cannot connect to Postgres"):
        Database.from_settings(bad)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{", "not valid JSON"),
        ('{"episode_id": 1}', "expected a JSON list"),
        ('[{"episode_id": 1}]', "entry 1 (episode_id 1): field 'file_name'"),
        ('[{"file_name": "a.mp3"}]', "entry 1: field 'episode_id'"),
        ('[{"episode_id": 1, "file_name": "a.mp3"}, {"episode_id": "1", "file_name": "b.mp3"}]',
         "entry 2 (episode_id '1'): field 'episode_id': duplicate of entry 1"),
        ('[{"episode_id": 2, "file_name": "a.mp3", "speakers_map": ["x"]}]', "field 'speakers_map'"),
        ('[{"episode_id": 2, "file_name": "a.mp3"}, {"episode_id": 3, "file_name": "b.mp3", "speakers_map": {"speaker_1": "Ann"}}]',
         "entry 2 (episode_id 3): field 'speakers_map': Value error, key 'speaker_1' is not a speaker number"),
        ('[{"episode_id": 2, "file_name": "a.mp3", "published": "yesterday"}]', "field 'published'"),
    ],
)
def test_catalogue_errors_name_file_entry_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "episodes.json"
    path.write_text(content)
    with pytest.raises(CatalogueError) as err:
        load_catalogue(path)
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.fast
def test_catalogue_in_the_users_format_loads(tmp_path: Path) -> None:
    path = tmp_path / "episodes.json"
    path.write_text(json.dumps([
        {"episode_id": 1, "file_name": "AGD-180.mp3", "speakers_map": {"1": "Ricky Ghoshroy"}, "processed": False},
        {"episode_id": "AGD-181", "file_name": "AGD-181.mp3", "title": "Ökonomie – 経済", "published": "2025-03-01",
         "audio_url": "https://example.org/a.mp3", "speakers_map": {"0": "Zoë"}},
    ]))
    first, second = load_catalogue(path)
    assert first.episode_id == "1" and first.speakers_map == {"1": "Ricky Ghoshroy"}
    assert second.title == "Ökonomie – 経済" and str(second.published) == "2025-03-01"
