"""Section 9: a million chunks (issue 28) — a podcast network's store, measured on one machine.

The corpus extends section 4's (bench/search_latency.py): topic centres are real all-MiniLM-L6-v2 embeddings of
10,000 generated topic sentences; each episode (200 chunks) dwells on six topics, unevenly; each chunk is its topic's
centre + its speaker's style (the host's, or the episode's one guest's) + Gaussian noise, normalised. Texts are the
topic's words plus 40 words drawn from a Zipf vocabulary (the section 4 filler words most common), so the text side
meets long and short posting lists as in speech. It is generated once per (size, seed) and cached in
.gdr/bench/scale/ (gitignored), so every run and round loads the same rows. The 1536-d (OpenAI-sized) vectors are
the same clean vectors turned into 1536 dimensions by a fixed orthonormal map, plus 1536-d noise: same neighbours'
structure, generated block by block from the seed rather than cached (6 GB at 1M).

Everything goes through the project's schema (migrated database) and is searched by the library call
(`Searcher.search`, as `gent_disagreement_rag.search.search` runs it), as in section 4.

    uv run python -m bench.run_all --only scale [--quick]
"""

from __future__ import annotations

import json
import resource
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench.harness import REPO_ROOT, Postgres, load, log, percentile
from bench.search_latency import (EPISODE_CHUNKS, FILLER, GUESTS, HOST, K, NOISE_NORM, TOPIC_CONTEXTS, TOPIC_SUBJECTS,
                                  TOPIC_VERBS, exact_top, query_text)

CACHE = REPO_ROOT / ".gdr" / "bench" / "scale"
PARTIAL = REPO_ROOT / "bench" / "out" / "scale-partial.json"
SEED = 28
UNSEEN_SEED = 2028  # a second query set, drawn after the figures for SEED were looked at
TOPIC_AUDIENCES = ("for farmers", "for children", "for investors", "for doctors", "for city planners")
EPISODE_TOPICS = (0.35, 0.25, 0.15, 0.1, 0.1, 0.05)  # an episode's topics, by share of its chunks
STYLE_NORM = 0.3  # |speaker style| / |topic centre|
TEXT_WORDS = 40
VOCABULARY = 3000
NEW_EPISODE_CHUNKS = 160  # a one-hour episode at ~22 s chunks
LOCAL = ("local", "all-MiniLM-L6-v2", 384)
OPENAI = ("openai", "text-embedding-3-small", 1536)
HNSW_M = 16  # pgvector's defaults, the store's index
HNSW_EF_CONSTRUCTION = 64


def topics(n: int) -> list[str]:
    """Section 4's topic sentences with a fourth part, the audience: 25 x 8 x 10 x 5 = 10,000 distinct ones."""
    out = []
    for i in range(n):
        s = TOPIC_SUBJECTS[i % len(TOPIC_SUBJECTS)]
        i2 = i // len(TOPIC_SUBJECTS)
        v = TOPIC_VERBS[i2 % len(TOPIC_VERBS)]
        i3 = i2 // len(TOPIC_VERBS)
        c = TOPIC_CONTEXTS[i3 % len(TOPIC_CONTEXTS)]
        a = TOPIC_AUDIENCES[(i3 // len(TOPIC_CONTEXTS)) % len(TOPIC_AUDIENCES)]
        out.append(f"how {s} {v} {c} {a}")
    return out


def vocabulary() -> np.ndarray:
    rng = np.random.default_rng(0)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    made = {"".join(rng.choice(syllables, rng.integers(2, 4))) for _ in range(VOCABULARY * 2)}
    return np.array(list(FILLER) + sorted(made)[:VOCABULARY - len(FILLER)])


def _centres(n_topics: int) -> np.ndarray:
    path = CACHE / f"centres-{n_topics}.npy"
    if not path.exists():
        from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMEmbedder

        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, LocalMiniLMEmbedder().embed(topics(n_topics)).vectors.astype(np.float32))
    return np.load(path)


def corpus(n: int, seed: int = SEED) -> dict[str, Any]:
    """The cached corpus of n chunks: vectors (memory-mapped), topic, speaker and text word ids per chunk."""
    n_topics = min(10_000, max(100, n // 100))
    vec_path, meta_path = CACHE / f"corpus-{n}-{seed}-vectors.npy", CACHE / f"corpus-{n}-{seed}.npz"
    centres = _centres(n_topics)
    if not meta_path.exists():
        started = time.perf_counter()
        rng = np.random.default_rng(seed)
        n_episodes = n // EPISODE_CHUNKS
        episode_topics = rng.integers(n_topics, size=(n_episodes, len(EPISODE_TOPICS)))
        episode_of = np.repeat(np.arange(n_episodes), EPISODE_CHUNKS)
        topic_of = episode_topics[episode_of, rng.choice(len(EPISODE_TOPICS), size=n, p=EPISODE_TOPICS)]
        guest = (episode_of % len(GUESTS)) + 1
        speaker_of = np.where(np.arange(n) % 2 == 0, 0, guest)  # 0: the host; i: GUESTS[i - 1]
        styles = rng.standard_normal((len(GUESTS) + 1, centres.shape[1])).astype(np.float32)
        styles *= STYLE_NORM / np.linalg.norm(styles, axis=1, keepdims=True)
        vectors = np.lib.format.open_memmap(str(vec_path) + ".tmp.npy", mode="w+", dtype=np.float32, shape=(n, centres.shape[1]))
        for start in range(0, n, 100_000):
            stop = min(n, start + 100_000)
            noise = rng.standard_normal((stop - start, centres.shape[1])).astype(np.float32)
            noise *= NOISE_NORM / np.linalg.norm(noise, axis=1, keepdims=True)
            block = centres[topic_of[start:stop]] + styles[speaker_of[start:stop]] + noise
            vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
        vectors.flush()
        del vectors
        Path(str(vec_path) + ".tmp.npy").rename(vec_path)
        zipf = 1.0 / np.arange(1, VOCABULARY + 1)
        words = rng.choice(VOCABULARY, size=(n, TEXT_WORDS), p=zipf / zipf.sum()).astype(np.uint16)
        np.savez(meta_path, topic_of=topic_of, speaker_of=speaker_of, words=words, styles=styles)
        log(f"  scale: generated the {n:,}-chunk corpus (seed {seed}) in {time.perf_counter() - started:.0f} s")
    meta = np.load(meta_path)
    return {"n": n, "seed": seed, "centres": centres, "names": topics(len(centres)), "vectors": np.load(vec_path, mmap_mode="r"),
            "topic_of": meta["topic_of"], "speaker_of": meta["speaker_of"], "words": meta["words"], "styles": meta["styles"]}


def speaker_name(i: int) -> str:
    return HOST if i == 0 else GUESTS[i - 1]


def projection(dims: int = OPENAI[2]) -> np.ndarray:
    """A fixed 384 -> dims map with orthonormal columns: cosines between clean vectors are kept."""
    q, _ = np.linalg.qr(np.random.default_rng(1536).standard_normal((dims, 384)))
    return q.astype(np.float32)


def openai_block(c: dict[str, Any], start: int, stop: int, rng: np.random.Generator, q: np.ndarray) -> np.ndarray:
    clean = c["centres"][c["topic_of"][start:stop]] + c["styles"][c["speaker_of"][start:stop]]
    noise = rng.standard_normal((stop - start, q.shape[0])).astype(np.float32)
    noise *= NOISE_NORM * np.linalg.norm(clean, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True) / 1.04
    block = clean @ q.T + noise
    return block / np.linalg.norm(block, axis=1, keepdims=True)


# --- measuring --------------------------------------------------------------------------------------


class MemorySampler:
    """Peak proportional set size (Pss) of the Postgres server's processes together, sampled every 0.5 s."""

    def __init__(self, pg: Postgres):
        self.root = int((pg.home / "pgdata" / "postmaster.pid").read_text().split()[0])
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pss(self) -> int:
        from bench.harness import descendants

        total = 0
        for pid in [self.root, *descendants(self.root)]:
            try:
                for line in open(f"/proc/{pid}/smaps_rollup"):
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self._pss())

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _mb(nbytes: float) -> int:
    return round(nbytes / 2**20)


def sizes(url: str) -> dict[str, int]:
    """Size on disk (MB) of the database and its big relations."""
    with psycopg.connect(url) as conn:
        out = {"database": _mb(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])}
        for label, rel in (("segments (heap + toast)", "segments"), ("embeddings (heap + toast)", "embeddings")):
            out[label] = _mb(conn.execute("SELECT pg_table_size(%s::regclass)", (rel,)).fetchone()[0])
        for name, size in conn.execute("SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes "
                                       "WHERE relname IN ('segments', 'embeddings') ORDER BY 2 DESC").fetchall():
            out[name] = _mb(size)
    return out


def index_sql(model_id: str, dims: int, kind: str = "vector") -> str:
    """The store's partial HNSW index (storage/vector_index.create_sql), or its other kind under its own name."""
    from gent_disagreement_rag.storage import segments as segment_store
    from gent_disagreement_rag.storage.vector_index import IndexKind, create_sql

    name = segment_store.index_name(model_id) + ("_half" if kind == "halfvec" else "")
    return create_sql(name, model_id, dims, IndexKind(kind)).as_string(None)


def build_index(url: str, model_id: str, dims: int, rows: int, *, kind: str = "vector", workers: int | None = None,
                memory_mb: int | None = None) -> dict[str, Any]:
    """CREATE INDEX after the load with the store's build settings (vector_index.BuildSettings: memory for the
    whole graph, a parallel worker per spare core), or the ones given."""
    from gent_disagreement_rag.storage.vector_index import BuildSettings, IndexKind

    wanted = BuildSettings.for_graph(rows, dims, IndexKind(kind))
    settings = BuildSettings(memory_mb or wanted.maintenance_work_mem_mb,
                             wanted.parallel_workers if workers is None else workers)
    notices: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        for statement in settings.statements():
            conn.execute(statement)
        started = time.perf_counter()
        conn.execute(index_sql(model_id, dims, kind))
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "maintenance_work_mem_mb": settings.maintenance_work_mem_mb,
            "workers": settings.parallel_workers, "notices": notices, "load": load()}


def load_local(pg: Postgres, c: dict[str, Any], n: int) -> tuple[str, dict[str, Any]]:
    """The first n chunks of the corpus into a new migrated database: episodes, segments, 384-d vectors (no index)."""
    from pgvector.psycopg import register_vector

    from gent_disagreement_rag.providers.embedders import model_id
    from gent_disagreement_rag.storage import segments as segment_store

    vocab = vocabulary()
    names = c["names"]
    mid = model_id(*LOCAL)
    url = pg.create_database(f"scale{n // 1000}k")
    n_episodes = n // EPISODE_CHUNKS
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        register_vector(conn)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO episodes (episode_id, title, published, status) VALUES (%s, %s, %s, 'processed')",
                            [(f"E{e:04d}", f"Episode {e}", f"20{10 + e * 10 // max(1, n_episodes):02d}-01-01")
                             for e in range(n_episodes)])
            cur.execute("INSERT INTO embedding_models (model_id, provider, model, dimensions, index_name) "
                        "VALUES (%s, %s, %s, %s, %s)", (mid, *LOCAL, segment_store.index_name(mid)))
            # README's import procedure: the full-text index dropped for the COPY and built after it.
            [(gin,)] = cur.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'segments_tsv_idx'").fetchall()
            cur.execute("DROP INDEX segments_tsv_idx")
            with cur.copy("COPY segments (episode_id, position, speaker, start_seconds, end_seconds, text, token_count) "
                          "FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["text", "int4", "text", "float8", "float8", "text", "int4"])
                for start in range(0, n, 50_000):
                    stop = min(n, start + 50_000)
                    texts = vocab[c["words"][start:stop]]
                    for i in range(start, stop):
                        e, p = divmod(i, EPISODE_CHUNKS)
                        text = names[c["topic_of"][i]] + " " + " ".join(texts[i - start])
                        copy.write_row((f"E{e:04d}", p, speaker_name(c["speaker_of"][i]), p * 22.0, p * 22.0 + 21.5, text, 60))
            copied = time.perf_counter() - started
            cur.execute("SET maintenance_work_mem = '1GB'")
            cur.execute(gin)
            gin_seconds = time.perf_counter() - started - copied
            segments_seconds = time.perf_counter() - started
            with cur.copy("COPY embeddings (model_id, episode_id, position, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "int4", "vector"])
                for start in range(0, n, 50_000):
                    block = np.asarray(c["vectors"][start:min(n, start + 50_000)])
                    for j, v in enumerate(block):
                        e, p = divmod(start + j, EPISODE_CHUNKS)
                        copy.write_row((mid, f"E{e:04d}", p, v))
        conn.commit()
    seconds = time.perf_counter() - started
    return url, {"seconds": round(seconds, 1), "segments_seconds": round(segments_seconds, 1),
                 "gin_after_seconds": round(gin_seconds, 1), "rows_per_second": round(n / seconds), "load": load()}


def analyse(url: str) -> None:
    # What autovacuum does soon after a bulk load, done before measuring (as section 4).
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def bulk_load(pg: Postgres, c: dict[str, Any], n: int) -> tuple[str, dict[str, Any]]:
    from gent_disagreement_rag.providers.embedders import model_id

    started = time.perf_counter()
    with MemorySampler(pg) as memory:
        url, loaded = load_local(pg, c, n)
        log(f"  scale: {n:,} chunks loaded in {loaded['seconds']} s ({loaded['rows_per_second']:,} rows/s)")
        index = build_index(url, model_id(*LOCAL), LOCAL[2], n)
        log(f"  scale: HNSW built in {index['seconds']} s (maintenance_work_mem {index['maintenance_work_mem_mb']} MB, "
            f"{index['workers']} worker){' ' + '; '.join(index['notices']) if index['notices'] else ''}")
        t = time.perf_counter()
        analyse(url)
        vacuum = time.perf_counter() - t
    total = time.perf_counter() - started
    out = {"chunks": n, "load": loaded, "index": index, "vacuum_analyze_seconds": round(vacuum, 1),
           "total_seconds": round(total, 1), "postgres_peak_pss_mb": _mb(memory.peak),
           "bench_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "sizes": sizes(url),
           "load_avg": load()}
    log(f"  scale: bulk load total {total:.0f} s, Postgres peak Pss {out['postgres_peak_pss_mb']} MB, "
        f"database {out['sizes']['database']} MB")
    return url, out


def world_of(url: str, c: dict[str, Any], n: int) -> dict[str, Any]:
    """What section 4's library() and cli() take."""
    return {"url": url, "vectors": c["vectors"][:n], "names": c["names"]}


def queries_for(c: dict[str, Any], seed: int, count: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [query_text(c["names"][c["topic_of"][rng.integers(c["n"])]], rng) for _ in range(count)]


def timed_searches(url: str, queries: list[str], cases: dict[str, dict[str, Any]], rounds: int = 1) -> dict[str, Any]:
    """p50/p95 of the library call per case, cases taking turns query by query."""
    from gent_disagreement_rag import search as S
    from gent_disagreement_rag.settings import Settings
    from gent_disagreement_rag.storage.database import Database

    settings = Settings(_env_file=None, database_url=url, embedder="local", transcriber="local")
    times: dict[str, list[float]] = {name: [] for name in cases}
    counts: dict[str, list[int]] = {name: [] for name in cases}
    with Database(url, max_size=2) as db:
        db.open()
        searcher = S.Searcher(settings, db)
        for q in queries[:5]:
            for options in cases.values():
                searcher.search(q, K, **options)
        for _ in range(rounds):
            for q in queries:
                for name, options in cases.items():
                    t = time.perf_counter()
                    hits = searcher.search(q, K, **options)
                    times[name].append(time.perf_counter() - t)
                    counts[name].append(len(hits))
    return {name: {"p50_ms": round(percentile(v, 50) * 1000, 1), "p95_ms": round(percentile(v, 95) * 1000, 1),
                   "min_results": min(counts[name]), "queries": len(v), "load": load()} for name, v in times.items()}


def text_side_100k(pg: Postgres, c: dict[str, Any], queries: list[str]) -> dict[str, Any]:
    """The text side alone at 100k chunks: the corpus's first 100k chunks, segments only (text mode needs no vectors)."""
    url, _ = load_local(pg, c, 100_000)
    analyse(url)
    try:
        return timed_searches(url, queries, {"text": {"mode": "text"}})["text"]
    finally:
        pg.drop_database(url)


def buffer_cache(pg: Postgres, url: str, queries: list[str], sizes_mb: list[int], rounds: int) -> dict[str, Any]:
    """Search p95 and the share of pages found in shared_buffers, per EMBEDDED_SHARED_BUFFERS_MB, the sizes taking
    turns round after round (the server restarted with each; the OS's page cache stays warm, this machine's RAM
    holds the whole database). `first query` is the first search after the restart."""
    from gent_disagreement_rag.storage.embedded import embedded_server, shared_buffers_mb

    per: dict[int, list[dict[str, Any]]] = {s: [] for s in sizes_mb}
    cases = {"vector": {"mode": "vector"}, "hybrid": {"mode": "hybrid"}}
    for _ in range(rounds):
        for size in sizes_mb:
            embedded_server(pg.home / "pgdata", shared_buffers=size)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_reset()")
            t = time.perf_counter()
            timed_searches(url, queries[:1], {"hybrid": {"mode": "hybrid"}})
            first = time.perf_counter() - t
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_reset()")
            figures = timed_searches(url, queries, cases)
            time.sleep(2)  # the searches' backends have ended; their statistics reach the shared counters
            with psycopg.connect(url, autocommit=True) as conn:
                shown = conn.execute("SHOW shared_buffers").fetchone()[0]
                hit, read = conn.execute("SELECT sum(heap_blks_hit + coalesce(idx_blks_hit, 0)), "
                                         "sum(heap_blks_read + coalesce(idx_blks_read, 0)) FROM pg_statio_user_tables").fetchone()
            assert shown == f"{size}MB" or shown == f"{size // 1024}GB", f"shared_buffers is {shown}, not {size} MB"
            per[size].append({"first_query_s": round(first, 2), "hit_ratio": round(float(hit) / max(1, float(hit + read)), 4),
                              **{f"{k}_p95_ms": v["p95_ms"] for k, v in figures.items()}, "load": load()})
            log(f"    shared_buffers {size} MB: " + json.dumps(per[size][-1]))
    embedded_server(pg.home / "pgdata", shared_buffers=shared_buffers_mb(None))
    out = {}
    for size, runs in per.items():
        out[str(size)] = {key: round(float(np.median([r[key] for r in runs])), 4) for key in runs[0]} | {"rounds": len(runs)}
    return out


def incremental(url: str, c: dict[str, Any], queries: list[str], episodes: int) -> dict[str, Any]:
    """One-hour episodes (160 chunks) stored by the store (segment_store.store_episode, HNSW in place) into the full
    store, one after another, while another thread searches through the library without pause."""
    from gent_disagreement_rag import search as S
    from gent_disagreement_rag.providers.embedders import model_id
    from gent_disagreement_rag.settings import Settings
    from gent_disagreement_rag.storage import segments as segment_store
    from gent_disagreement_rag.storage.database import Database
    from tests.support.builders import segment

    rng = np.random.default_rng(SEED + 1)
    vocab = vocabulary()
    mid = model_id(*LOCAL)
    new = []
    for e in range(episodes):
        rows = rng.integers(c["n"] - NEW_EPISODE_CHUNKS)
        chunks = [segment(p, speaker_name(c["speaker_of"][rows + p]), p * 22.0, p * 22.0 + 21.5,
                          c["names"][c["topic_of"][rows + p]] + " " + " ".join(vocab[c["words"][rows + p]]), 60)
                  for p in range(NEW_EPISODE_CHUNKS)]
        vectors = np.asarray(c["vectors"][rows:rows + NEW_EPISODE_CHUNKS]) + 0.05 * rng.standard_normal(
            (NEW_EPISODE_CHUNKS, LOCAL[2])).astype(np.float32)
        new.append((f"N{e:04d}", chunks, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)))
    settings = Settings(_env_file=None, database_url=url, embedder="local", transcriber="local")
    stop = threading.Event()
    during: list[tuple[float, int]] = []

    def searching() -> None:
        with Database(url, max_size=1) as db:
            db.open()
            searcher = S.Searcher(settings, db)
            searcher.search(queries[0], K)
            i = 0
            while not stop.is_set():
                t = time.perf_counter()
                hits = searcher.search(queries[i % len(queries)], K)
                during.append((time.perf_counter() - t, len(hits)))
                i += 1

    with psycopg.connect(url, autocommit=True) as conn:
        conn.cursor().executemany("INSERT INTO episodes (episode_id, title) VALUES (%s, %s)", [(e, e) for e, _, _ in new])
    before = timed_searches(url, queries, {"hybrid": {"mode": "hybrid"}})["hybrid"]
    thread = threading.Thread(target=searching, daemon=True)
    thread.start()
    time.sleep(3)  # the searcher's model loaded and searching
    seconds = []
    with Database(url, max_size=2) as db:
        db.open()
        searched_before = len(during)
        for episode_id, chunks, vectors in new:
            t = time.perf_counter()
            segment_store.store_episode(db, episode_id, chunks, model_id=mid, provider=LOCAL[0], model=LOCAL[1], vectors=vectors)
            seconds.append(time.perf_counter() - t)
        searched = during[searched_before:]
    stop.set()
    thread.join()
    times = [t for t, _ in searched]
    return {"episodes": episodes, "chunks_each": NEW_EPISODE_CHUNKS, "seconds_median": round(float(np.median(seconds)), 2),
            "seconds": [round(s, 2) for s in seconds], "searches_during": len(searched),
            "search_p95_ms_during": round(percentile(times, 95) * 1000, 1) if times else None,
            "min_results_during": min((k for _, k in searched), default=None),
            "search_p95_ms_before": before["p95_ms"], "load": load()}


def load_openai(pg: Postgres, url: str, c: dict[str, Any], n: int) -> dict[str, Any]:
    """The same n chunks' 1536-d vectors (a second model, as when switching to OpenAI), COPYed into the store."""
    from pgvector.psycopg import register_vector

    from gent_disagreement_rag.providers.embedders import model_id
    from gent_disagreement_rag.storage import segments as segment_store

    from gent_disagreement_rag.storage.vector_index import kind_for

    mid = model_id(*OPENAI)
    q = projection()
    rng = np.random.default_rng(SEED + 1536)
    before = sizes(url)
    with MemorySampler(pg) as memory:
        started = time.perf_counter()
        with psycopg.connect(url) as conn:
            register_vector(conn)
            conn.execute("INSERT INTO embedding_models (model_id, provider, model, dimensions, index_name, index_kind) "
                         "VALUES (%s, %s, %s, %s, %s, %s)", (mid, *OPENAI, segment_store.index_name(mid), kind_for(OPENAI[2])))
            with conn.cursor() as cur, cur.copy("COPY embeddings (model_id, episode_id, position, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "int4", "vector"])
                for start in range(0, n, 10_000):
                    block = openai_block(c, start, min(n, start + 10_000), rng, q)
                    for j, v in enumerate(block):
                        e, p = divmod(start + j, EPISODE_CHUNKS)
                        copy.write_row((mid, f"E{e:04d}", p, v))
            conn.commit()
        seconds = time.perf_counter() - started
    analyse(url)
    after = sizes(url)
    return {"chunks": n, "seconds": round(seconds, 1), "rows_per_second": round(n / seconds),
            "embeddings_growth_mb": after["embeddings (heap + toast)"] - before["embeddings (heap + toast)"],
            "postgres_peak_pss_mb": _mb(memory.peak), "load": load()}


def chat(pg: Postgres, url: str, c: dict[str, Any], count: int, rounds: int) -> dict[str, Any]:
    """The chat server's verbatim query (tests/support/chat_server.py) as the `gdr db env` reader, over the 1536-d
    vectors, alternating with the same query without parallel workers."""
    import psycopg2

    from gent_disagreement_rag.storage import reader as chat_access
    from tests.support.chat_server import QUERY

    reader = chat_access.ensure_reader(url, pg.home / "gdr")
    rng = np.random.default_rng(SEED + 17)
    q = projection()
    vectors = []
    for t in rng.integers(len(c["centres"]), size=count):
        v = c["centres"][t] @ q.T + NOISE_NORM / np.sqrt(OPENAI[2]) * rng.standard_normal(OPENAI[2]).astype(np.float32)
        vectors.append(str((v / np.linalg.norm(v)).tolist()))
    forms = {"verbatim": "", "no parallel workers": "SET max_parallel_workers_per_gather = 0"}
    conns = {}
    for name, setup in forms.items():
        conns[name] = psycopg2.connect(**reader.connect_kwargs())
        conns[name].autocommit = True
        if setup:
            conns[name].cursor().execute(setup)
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(rounds):
        for v in vectors:
            for name, conn in conns.items():
                with conn.cursor() as cur:
                    t = time.perf_counter()
                    cur.execute(QUERY.format(where=""), (v, K))
                    rows = cur.fetchall()
                    times[name].append(time.perf_counter() - t)
                    assert len(rows) == K
    for conn in conns.values():
        conn.close()
    return {name: {"p50_ms": round(percentile(v, 50) * 1000), "p95_ms": round(percentile(v, 95) * 1000), "queries": len(v),
                   "load": load()} for name, v in times.items()}


def halfvec_vs_vector(pg: Postgres, c: dict[str, Any], n: int, rounds: int, n_queries: int = 20) -> dict[str, Any]:
    """1536-d: the store's vector(1536) index against a halfvec(1536) expression index, built after the load, in
    alternating rounds (a fresh database each): build time, index size, recall@10 against exact search."""
    from pgvector.psycopg import register_vector

    from gent_disagreement_rag.providers.embedders import model_id
    from gent_disagreement_rag.storage import segments as segment_store

    mid = model_id(*OPENAI)
    q = projection()
    truth_vectors = np.concatenate([openai_block(c, s, min(n, s + 10_000), np.random.default_rng(SEED + s), q)
                                    for s in range(0, n, 10_000)])
    qrng = np.random.default_rng(SEED + 99)
    qvs = []
    for t in c["topic_of"][qrng.integers(n, size=n_queries)]:
        v = c["centres"][t] @ q.T + NOISE_NORM / np.sqrt(OPENAI[2]) * qrng.standard_normal(OPENAI[2]).astype(np.float32)
        qvs.append((v / np.linalg.norm(v)).astype(np.float32))
    truths = [set(exact_top(truth_vectors, v)) for v in qvs]
    per: dict[str, list[dict[str, Any]]] = {"vector": [], "halfvec": []}
    for _ in range(rounds):
        for kind in per:
            url = pg.create_database("half")
            try:
                with psycopg.connect(url) as conn:
                    register_vector(conn)
                    conn.cursor().executemany("INSERT INTO episodes (episode_id, title) VALUES (%s, %s)",
                                     [(f"E{e:04d}", "x") for e in range(n // EPISODE_CHUNKS)])
                    conn.execute("INSERT INTO embedding_models (model_id, provider, model, dimensions, index_name) "
                                 "VALUES (%s, %s, %s, %s, %s)", (mid, *OPENAI, segment_store.index_name(mid)))
                    with conn.cursor() as cur, cur.copy("COPY segments (episode_id, position, speaker, start_seconds, "
                                                        "end_seconds, text, token_count) FROM STDIN") as copy:
                        for i in range(n):
                            e, p = divmod(i, EPISODE_CHUNKS)
                            copy.write_row((f"E{e:04d}", p, HOST, p * 22.0, p * 22.0 + 21.5, "x", 1))
                    with conn.cursor() as cur, cur.copy("COPY embeddings (model_id, episode_id, position, embedding) "
                                                        "FROM STDIN WITH (FORMAT BINARY)") as copy:
                        copy.set_types(["text", "text", "int4", "vector"])
                        for i, v in enumerate(truth_vectors):
                            e, p = divmod(i, EPISODE_CHUNKS)
                            copy.write_row((mid, f"E{e:04d}", p, v))
                    conn.commit()
                built = build_index(url, mid, OPENAI[2], n, kind=kind)
                with psycopg.connect(url, autocommit=True) as conn:
                    register_vector(conn)
                    conn.execute("VACUUM ANALYZE embeddings")
                    size = conn.execute("SELECT pg_relation_size(indexrelid) FROM pg_stat_user_indexes "
                                        "WHERE indexrelname LIKE 'embeddings_hnsw_%%'").fetchone()[0]
                    conn.execute("SET hnsw.ef_search = 100")
                    recalls, times = [], []
                    for v, truth in zip(qvs, truths, strict=True):
                        t = time.perf_counter()
                        rows = conn.execute(f"SELECT episode_id, position FROM embeddings WHERE model_id = '{mid}' "
                                            f"ORDER BY embedding::{kind}(1536) <=> %s::{kind}(1536) LIMIT 10", (v,)).fetchall()
                        times.append(time.perf_counter() - t)
                        recalls.append(len(truth & {int(e[1:]) * EPISODE_CHUNKS + p for e, p in rows}) / K)
                per[kind].append({"build_s": built["seconds"], "index_mb": _mb(size), "recall_at_10": float(np.mean(recalls)),
                                  "scan_p95_ms": round(percentile(times, 95) * 1000, 1), "load": built["load"]})
                log(f"    1536-d {kind}: " + json.dumps(per[kind][-1]))
            finally:
                pg.drop_database(url)
    return {"chunks": n, "rounds": rounds, "kinds": {kind: {key: round(float(np.median([r[key] for r in runs])), 3)
                                                          for key in runs[0]} for kind, runs in per.items()}}


def build_settings(pg: Postgres, c: dict[str, Any], n: int, rounds: int) -> dict[str, Any]:
    """The 384-d index build at n chunks under three settings, alternating: the server's defaults
    (maintenance_work_mem 64 MB, 2 parallel workers), the graph's size with 1 worker, the graph's size with none."""
    from gent_disagreement_rag.providers.embedders import model_id

    from gent_disagreement_rag.storage import segments as segment_store

    settings = {"defaults (64 MB, 2 workers)": {"memory_mb": 64, "workers": 2},
                "graph-sized memory, 1 worker": {"workers": 1}, "graph-sized memory, no worker": {"workers": 0}}
    url, _ = load_local(pg, c, n)
    per: dict[str, list[float]] = {name: [] for name in settings}
    loads: dict[str, list[float]] = {name: [] for name in settings}
    try:
        for _ in range(rounds):
            for name, options in settings.items():
                built = build_index(url, model_id(*LOCAL), LOCAL[2], n, **options)
                per[name].append(built["seconds"])
                loads[name].append(built["load"])
                log(f"    build {n:,} {name}: {built['seconds']} s {built['notices'][:1]}")
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"DROP INDEX {segment_store.index_name(model_id(*LOCAL))}")
    finally:
        pg.drop_database(url)
    return {"chunks": n, "rounds": rounds, "settings": {name: {"seconds": float(np.median(v)), "load": float(np.median(loads[name]))}
                                                       for name, v in per.items()}}


def gin_after(pg: Postgres, c: dict[str, Any], n: int, rounds: int) -> dict[str, Any]:
    """The segments' COPY at n chunks with the full-text GIN index in place (as the schema has it; fastupdate off,
    so every row's ~40 lexemes go into the tree as it arrives) against the index dropped and built after the COPY
    (CREATE INDEX sorts the entries in maintenance_work_mem), alternating, each in a fresh database."""
    vocab = vocabulary()
    per: dict[str, list[float]] = {"GIN in place": [], "GIN built after": []}
    loads: dict[str, list[float]] = {name: [] for name in per}
    for _ in range(rounds):
        for name in per:
            url = pg.create_database("gin")
            try:
                with psycopg.connect(url) as conn:
                    conn.cursor().executemany("INSERT INTO episodes (episode_id, title) VALUES (%s, %s)",
                                              [(f"E{e:04d}", "x") for e in range(n // EPISODE_CHUNKS)])
                    conn.commit()
                    started = time.perf_counter()
                    if name == "GIN built after":
                        conn.execute("DROP INDEX segments_tsv_idx")
                    with conn.cursor() as cur, cur.copy("COPY segments (episode_id, position, speaker, start_seconds, "
                                                        "end_seconds, text, token_count) FROM STDIN WITH (FORMAT BINARY)") as copy:
                        copy.set_types(["text", "int4", "text", "float8", "float8", "text", "int4"])
                        texts = vocab[c["words"][:n]]
                        for i in range(n):
                            e, p = divmod(i, EPISODE_CHUNKS)
                            copy.write_row((f"E{e:04d}", p, speaker_name(c["speaker_of"][i]), p * 22.0, p * 22.0 + 21.5,
                                            c["names"][c["topic_of"][i]] + " " + " ".join(texts[i]), 60))
                    if name == "GIN built after":
                        conn.execute("SET maintenance_work_mem = '512MB'")
                        conn.execute("CREATE INDEX segments_tsv_idx ON segments USING gin (tsv) WITH (fastupdate = off)")
                    conn.commit()
                    per[name].append(time.perf_counter() - started)
                    loads[name].append(load())
                log(f"    segments COPY {n:,}, {name}: {per[name][-1]:.1f} s")
            finally:
                pg.drop_database(url)
    return {"chunks": n, "rounds": rounds, "ways": {name: {"seconds": round(float(np.median(v)), 1),
                                                          "load": round(float(np.median(loads[name])), 2)}
                                                   for name, v in per.items()}}


def _save(results: dict[str, Any]) -> None:
    PARTIAL.parent.mkdir(parents=True, exist_ok=True)
    PARTIAL.write_text(json.dumps(results, indent=1, default=str))


def _step(results: dict[str, Any], name: str, fn, *args, **kwargs) -> Any:
    """One measurement; a failure is recorded and the section goes on with the next."""
    t = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a bench step's failure is a figure too
        log(f"  scale: {name} failed: {exc!r}")
        results[name] = {"error": repr(exc)[:500]}
        value = None
    else:
        if isinstance(value, dict):
            results[name] = value
        results.setdefault("_when", {})[name] = time.strftime("%Y-%m-%d %H:%M")
    results.setdefault("_minutes", {})[name] = round((time.perf_counter() - t) / 60, 1)
    _save(results)
    return value


ON_THE_MILLION = ("library", "library_unseen_queries", "text", "cli", "incremental", "buffer_cache", "openai_load",
                  "chat")  # the steps that search or grow the bulk-loaded store (bulk_load runs first for any of them)
ON_THEIR_OWN = ("halfvec", "text_100k", "gin_after", "build_settings")


def run(pg: Postgres, *, quick: bool = False, steps: set[str] | None = None,
        previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every step, or only `steps` (the others keep their figures from `previous`, each with its own load and date)."""
    from bench.search_latency import cli, library

    wanted = (lambda name: True) if steps is None else (lambda name: name in steps)
    n = 20_000 if quick else 1_000_000
    n_queries = 20 if quick else 100
    results: dict[str, Any] = {k: v for k, v in (previous or {}).items() if steps is not None and k != "_meta"}
    results.update({"chunks": n, "seed": SEED, "unseen_seed": UNSEEN_SEED,
                    "hnsw": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}})
    t = time.perf_counter()
    c = corpus(n)
    results["corpus_seconds"] = round(time.perf_counter() - t, 1)
    log(f"  scale: corpus of {n:,} chunks ready ({len(c['centres']):,} topics)")
    queries = queries_for(c, SEED, n_queries)
    if wanted("bulk_load") or any(wanted(step) for step in ON_THE_MILLION):
        url, bulk = _step(results, "bulk_load", bulk_load, pg, c, n) or (None, None)
        if url is None:
            return results
        results["bulk_load"] = bulk
        unseen = queries_for(c, UNSEEN_SEED, n_queries)
        world = world_of(url, c, n)
        for name, fn, args in (
            ("library", library, (world, queries)),
            ("library_unseen_queries", library, (world, unseen)),
            ("text", timed_searches, (url, queries, {"text": {"mode": "text"}, "vector": {"mode": "vector"},
                                                     "hybrid": {"mode": "hybrid"}}, 3)),
            ("cli", cli, (world, queries, 3)),
            ("incremental", incremental, (url, c, queries, 3)),
            ("buffer_cache", buffer_cache, (pg, url, queries, [128, 1024, 4096] if not quick else [128, 1024], 2)),
            ("openai_load", load_openai, (pg, url, c, n)),
            ("chat", chat, (pg, url, c, 5 if quick else 3, 2)),
        ):
            if wanted(name):
                log(f"  scale: {name}")
                _step(results, name, fn, *args)
        results["sizes_after"] = sizes(url)
        pg.drop_database(url)
    for name, fn, args in (
        ("halfvec", halfvec_vs_vector, (pg, c, 10_000 if quick else 50_000, 3)),
        ("text_100k", text_side_100k, (pg, c, queries)),
        ("gin_after", gin_after, (pg, c, 10_000 if quick else 100_000, 3)),
        ("build_settings", build_settings, (pg, c, 10_000 if quick else 100_000, 3 if not quick else 1)),
    ):
        if wanted(name) and not (quick and name == "text_100k"):
            log(f"  scale: {name}")
            _step(results, name, fn, *args)
    results["load_at_end"] = load()
    return results


# --- the report (bench/report.py fills the template's section 9 with these) ----------------------------


def _row_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows])


def _get(d: dict[str, Any] | None, *keys: str, default: Any = "—") -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def figures(sc: dict[str, Any], template: str = "") -> dict[str, Any]:
    """The template's values for section 9 (a figure whose step did not run or failed shows as —)."""
    import re

    values: dict[str, Any] = dict.fromkeys(re.findall(r"\$(sc_\w+)", template), "—")
    values |= {"sc_chunks": f"{sc['chunks']:,}", "sc_episodes": f"{sc['chunks'] // EPISODE_CHUNKS:,}", "sc_seed": sc["seed"], "sc_unseen": sc["unseen_seed"]}
    bulk = sc.get("bulk_load") or {}
    if "total_seconds" in bulk:
        total_min = bulk["total_seconds"] / 60
        values |= {"sc_load_s": bulk["load"]["seconds"], "sc_load_rate": f"{bulk['load']['rows_per_second']:,}",
                   "sc_load_segments_s": bulk["load"]["segments_seconds"], "sc_load_load": bulk["load"]["load"],
                   "sc_index_s": bulk["index"]["seconds"], "sc_index_mwm": f"{bulk['index']['maintenance_work_mem_mb']:,}",
                   "sc_index_workers": bulk["index"]["workers"], "sc_index_load": bulk["index"]["load"],
                   "sc_index_notices": "; ".join(bulk["index"]["notices"]) or "none",
                   "sc_vacuum_s": bulk["vacuum_analyze_seconds"], "sc_total_min": f"{total_min:.1f}",
                   "sc_total_mark": "met" if total_min <= 15 else "**missed**",
                   "sc_pss": f"{bulk['postgres_peak_pss_mb']:,}", "sc_rss": f"{bulk['bench_peak_rss_mb']:,}",
                   "sc_sizes_table": _row_table(["relation", "MB on disk"], [[k, f"{v:,}"] for k, v in bulk["sizes"].items()])}
    cases = ["vector", "hybrid", "vector + speaker filter", "hybrid + speaker filter", "vector + episode filter",
             "hybrid + episode filter"]
    lib, unseen = sc.get("library") or {}, sc.get("library_unseen_queries") or {}
    if "vector" in lib:
        rows = []
        for case in cases:
            a, b = lib.get(case, {}), unseen.get(case, {})
            p95 = max(a.get("p95_ms", 0), b.get("p95_ms", 0))
            rows.append([case, f"{_get(a, 'p50_ms')} / {_get(b, 'p50_ms')}", f"{_get(a, 'p95_ms')} / {_get(b, 'p95_ms')}",
                         "met" if p95 < 20 else "**missed**", f"{_get(a, 'min_results')} / {_get(b, 'min_results')}",
                         f"{_get(a, 'recall_at_10', default='')} / {_get(b, 'recall_at_10', default='')}".strip(" /"),
                         f"{_get(a, 'load')} / {_get(b, 'load')}"])
        rows.append(["query embedding alone", "", f"{_get(lib, 'query embedding only', 'p95_ms')} / "
                     f"{_get(unseen, 'query embedding only', 'p95_ms')}", "", "", "", ""])
        for key in lib:
            if key.startswith("raw SQL HNSW scan"):
                rows.append([key, f"{lib[key]['p50_ms']} / {_get(unseen, key, 'p50_ms')}",
                             f"{lib[key]['p95_ms']} / {_get(unseen, key, 'p95_ms')}", "", "",
                             f"{lib[key]['recall_at_10']} / {_get(unseen, key, 'recall_at_10')}",
                             f"{lib[key]['load']} / {_get(unseen, key, 'load')}"])
        values["sc_search_table"] = _row_table(
            ["library call, k = 10", "p50 ms", "p95 ms", "p95 < 20 ms", "fewest results", "recall@10", "load"], rows)
        recall = min(lib["vector"].get("recall_at_10", 0), _get(unseen, "vector", "recall_at_10", default=1))
        values |= {"sc_recall": recall, "sc_recall_mark": "met" if recall >= 0.95 else "**missed**"}
    if text := sc.get("text"):
        if "text" in text:
            values |= {"sc_text_p95": text["text"]["p95_ms"], "sc_text_p50": text["text"]["p50_ms"],
                       "sc_text_vector_p95": text["vector"]["p95_ms"], "sc_text_hybrid_p95": text["hybrid"]["p95_ms"],
                       "sc_text_load": text["text"]["load"], "sc_text_queries": text["text"]["queries"]}
    t100 = sc.get("text_100k") or {}
    values |= {"sc_text100_p95": t100.get("p95_ms", "—"), "sc_text100_p50": t100.get("p50_ms", "—"),
               "sc_text100_load": t100.get("load", "—")}
    if cli := sc.get("cli"):
        values |= {"sc_cli": _get(cli, "gdr search", "p50_s"), "sc_cli_load": _get(cli, "gdr search", "load"),
                   "sc_cli_import": _get(cli, "import gent_disagreement_rag.cli", "seconds")}
    if (inc := sc.get("incremental")) and "seconds_median" in inc:
        values |= {"sc_inc_s": inc["seconds_median"], "sc_inc_all": ", ".join(f"{s:g}" for s in inc["seconds"]),
                   "sc_inc_searches": inc["searches_during"], "sc_inc_p95": inc["search_p95_ms_during"],
                   "sc_inc_before": inc["search_p95_ms_before"], "sc_inc_min": inc["min_results_during"],
                   "sc_inc_load": inc["load"]}
    if (buf := sc.get("buffer_cache")) and "error" not in buf:
        values["sc_buffer_table"] = _row_table(
            ["EMBEDDED_SHARED_BUFFERS_MB", "pages found in the cache", "vector p95 ms", "hybrid p95 ms",
             "first search after a restart", "rounds", "load"],
            [[size, f"{b['hit_ratio']:.1%}", f"{b['vector_p95_ms']:.1f}", f"{b['hybrid_p95_ms']:.1f}", f"{b['first_query_s']:.2f} s",
              int(b["rounds"]), f"{b['load']:.1f}"] for size, b in buf.items()])
    if (oa := sc.get("openai_load")) and "seconds" in oa:
        values |= {"sc_oa_s": oa["seconds"], "sc_oa_rate": f"{oa['rows_per_second']:,}", "sc_oa_mb": f"{oa['embeddings_growth_mb']:,}",
                   "sc_oa_pss": f"{oa['postgres_peak_pss_mb']:,}", "sc_oa_load": oa["load"]}
    if (ch := sc.get("chat")) and "verbatim" in ch:
        values |= {"sc_chat_p50": f"{ch['verbatim']['p50_ms']:,}", "sc_chat_p95": f"{ch['verbatim']['p95_ms']:,}",
                   "sc_chat_serial_p95": f"{ch['no parallel workers']['p95_ms']:,}", "sc_chat_n": ch["verbatim"]["queries"],
                   "sc_chat_load": ch["verbatim"]["load"]}
    if (hv := sc.get("halfvec")) and "kinds" in hv:
        values["sc_half_table"] = _row_table(
            [f"1536-d index at {hv['chunks']:,} chunks", "build s", "index MB", "recall@10", "scan p95 ms", "load"],
            [[kind, k["build_s"], f"{k['index_mb']:,.0f}", k["recall_at_10"], k["scan_p95_ms"], k["load"]]
             for kind, k in hv["kinds"].items()]) + f"\n\n(median of {hv['rounds']} alternating rounds)"
    if (ga := sc.get("gin_after")) and "ways" in ga:
        values["sc_gin_table"] = _row_table(
            [f"segments COPY at {ga['chunks']:,} chunks", "seconds", "load"],
            [[name, w["seconds"], w["load"]] for name, w in ga["ways"].items()]) + f"\n\n(median of {ga['rounds']} alternating rounds)"
    if (bs := sc.get("build_settings")) and "settings" in bs:
        values["sc_build_table"] = _row_table(
            [f"384-d HNSW build at {bs['chunks']:,} chunks", "seconds", "load"],
            [[name, s["seconds"], s["load"]] for name, s in bs["settings"].items()]) + f"\n\n(median of {bs['rounds']} alternating rounds)"
    steps = {"sc_has_cli": "cli", "sc_has_inc": "incremental", "sc_has_buf": "buffer_cache", "sc_has_oa": "openai_load",
             "sc_has_chat": "chat", "sc_has_text100": "text_100k"}
    for flag, step in steps.items():
        values[flag] = isinstance(sc.get(step), dict) and "error" not in sc[step]
    missing = [step for step in ("library", "text", "cli", "incremental", "buffer_cache", "openai_load", "chat", "text_100k",
                                 "halfvec", "gin_after", "build_settings") if not isinstance(sc.get(step), dict) or "error" in sc[step]]
    values["sc_not_run"] = (f"Not measured in this run (stopped for time, or failed): {', '.join(missing)}.\n" if missing else "")
    return values
