"""Section 4: search latency and recall at 10k and 100k stored chunks.

The stored vectors have the structure of real ones without embedding 100k texts: cluster centres are
real all-MiniLM-L6-v2 embeddings of generated topic sentences, and each chunk is its topic's centre
plus Gaussian noise (cosine ~0.75 to the centre), normalised — 100 chunks per topic. The queries are
real text (a topic's words in another order, plus other words), embedded by the library call itself
(the local model's query embedder), so they land where questions about a topic would. Uniform random
vectors would make HNSW recall meaningless (nothing is anyone's neighbour).

Each chunk has a text (its topic's words + filler, for the full-text side of hybrid search), an episode
(200 chunks each) and a speaker: the host (half of every episode) or one of 50 guests (~1% each).

Measured, per scale:
- the library call `search.search(query, k=10, mode=...)` with an open pool (query embedding included),
  vector and hybrid (the default), p50/p95 over the queries;
- recall@10 of vector mode against exact search (numpy, over all stored vectors, same query vector);
- a speaker filter (~1% of the chunks) and an episode filter (200 chunks): latency, and whether every
  query still gets k results (pgvector 0.8 iterative scan; exact fallback when it runs dry);
- `gdr search "..." -k 10` as a user runs it: a new process each time (the venv's `gdr`, and `uv run gdr`);
- the chat server's query (README "Using the knowledge base from another application"), verbatim, through the
  `chat` views, with psycopg2 as the `gdr db env` reader role, over 1536-d vectors (see chat_query).
The HNSW settings are read from the index and the library's constants and reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench.harness import REPO_ROOT, Postgres, load, log, percentile
from gent_disagreement_rag.search.statements import HNSW_EF_SEARCH
from tests.support.chat_server import QUERY as CHAT_QUERY
from tests.support.chat_server import THRESHOLD as CHAT_THRESHOLD

TOPIC_SUBJECTS = ("bees", "central banks", "transistors", "glaciers", "startups", "vaccines", "chess engines",
                  "coral reefs", "railways", "housing markets", "volcanoes", "language models", "marathon runners",
                  "medieval castles", "solar panels", "jazz musicians", "antibiotics", "supply chains",
                  "black holes", "school lunches", "electric cars", "wolves", "tax policy", "deep sea fish",
                  "coffee farmers")
TOPIC_VERBS = ("survive", "change", "fail", "grow", "compete", "adapt", "collapse", "recover")
TOPIC_CONTEXTS = ("in the winter", "during a recession", "after a war", "in a drought", "under new rules",
                  "in big cities", "on small islands", "over a century", "when prices rise", "in the dark")
FILLER = ("so", "the", "question", "is", "whether", "we", "really", "know", "and", "honestly", "I", "think",
          "people", "data", "story", "about", "what", "actually", "happens", "when")
HOST = "Ann Host"
GUESTS = [f"Guest{i:02d} Speaker" for i in range(50)]
CHUNKS_PER_TOPIC = 100
EPISODE_CHUNKS = 200
NOISE_NORM = 0.88  # |noise| / |centre|: cosine ~0.75 between a chunk and its topic's centre
K = 10


def topics(n: int) -> list[str]:
    out = []
    for i in range(n):
        s = TOPIC_SUBJECTS[i % len(TOPIC_SUBJECTS)]
        v = TOPIC_VERBS[(i // len(TOPIC_SUBJECTS)) % len(TOPIC_VERBS)]
        c = TOPIC_CONTEXTS[(i // (len(TOPIC_SUBJECTS) * len(TOPIC_VERBS))) % len(TOPIC_CONTEXTS)]
        out.append(f"how {s} {v} {c}")
    return out


def query_text(topic: str, rng: np.random.Generator) -> str:
    words = topic.split()[1:]
    rng.shuffle(words)
    extra = " ".join(rng.choice(FILLER, 2))
    return f"why do {' '.join(words)} {extra}"


def build(pg: Postgres, n: int, rng: np.random.Generator) -> dict[str, Any]:
    """A migrated database holding n chunks (segments + local MiniLM vectors), indexed as the store indexes them."""
    from pgvector.psycopg import register_vector

    from gent_disagreement_rag.providers.embedders import model_id
    from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMEmbedder
    from gent_disagreement_rag.storage import segments as segment_store

    n_topics = n // CHUNKS_PER_TOPIC
    names = topics(n_topics)
    centres = LocalMiniLMEmbedder().embed(names).vectors  # the stored side, embedded as ingestion does
    topic_of = rng.permutation(np.repeat(np.arange(n_topics), CHUNKS_PER_TOPIC))[:n]
    noise = rng.standard_normal((n, centres.shape[1])).astype(np.float32)
    noise *= NOISE_NORM / np.linalg.norm(noise, axis=1, keepdims=True)
    vectors = centres[topic_of] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    url = pg.create_database(f"search{n // 1000}k")
    mid = model_id("local", "all-MiniLM-L6-v2", 384)
    n_episodes = n // EPISODE_CHUNKS
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        register_vector(conn)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO episodes (episode_id, title, status) VALUES (%s, %s, 'processed')",
                            [(f"E{e:04d}", f"Episode {e}") for e in range(n_episodes)])
            cur.execute("INSERT INTO embedding_models (model_id, provider, model, dimensions, index_name) "
                        "VALUES (%s, 'local', 'all-MiniLM-L6-v2', 384, %s)", (mid, segment_store.index_name(mid)))
            with cur.copy("COPY segments (episode_id, position, speaker, start_seconds, end_seconds, text, token_count) "
                          "FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["text", "int4", "text", "float8", "float8", "text", "int4"])
                for i in range(n):
                    e, p = divmod(i, EPISODE_CHUNKS)
                    speaker = HOST if p % 2 == 0 else GUESTS[(e + p // 2) % len(GUESTS)]
                    text = names[topic_of[i]] + " " + " ".join(rng.choice(FILLER, 40))
                    copy.write_row((f"E{e:04d}", p, speaker, p * 15.0, p * 15.0 + 14.0, text, 60))
            with cur.copy("COPY embeddings (model_id, episode_id, position, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "int4", "vector"])
                for i in range(n):
                    e, p = divmod(i, EPISODE_CHUNKS)
                    copy.write_row((mid, f"E{e:04d}", p, vectors[i]))
        conn.commit()
        loaded = time.perf_counter() - started
        # The store's own index statement (segment_store.ensure_model), built after the bulk load.
        conn.execute("SET maintenance_work_mem = '1GB'")
        started = time.perf_counter()
        conn.execute(f"CREATE INDEX {segment_store.index_name(mid)} ON embeddings USING hnsw "
                     f"((embedding::vector(384)) vector_cosine_ops) WHERE model_id = '{mid}'")
        conn.commit()
        indexed = time.perf_counter() - started
        conn.autocommit = True
        # What autovacuum would do ~30 s after the bulk load, done before measuring, so that it does not
        # vacuum the table and its HNSW index on the cores the searches are timed on (a served corpus is settled).
        conn.execute("VACUUM ANALYZE")
        index_def = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (segment_store.index_name(mid),)).fetchone()[0]
    return {"url": url, "vectors": vectors, "names": names, "topic_of": topic_of, "load_seconds": round(loaded, 1),
            "index_seconds": round(indexed, 1), "index_def": index_def}


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int = K) -> list[int]:
    scores = vectors @ query
    top = np.argpartition(-scores, k)[:k]
    return [int(i) for i in top[np.argsort(-scores[top])]]


def _row_index(episode_id: str, position: int) -> int:
    return int(episode_id[1:]) * EPISODE_CHUNKS + position


def library(world: dict[str, Any], queries: list[str]) -> dict[str, Any]:
    from gent_disagreement_rag import search as S
    from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMQueryEmbedder
    from gent_disagreement_rag.settings import Settings
    from gent_disagreement_rag.storage.database import Database

    settings = Settings(_env_file=None, database_url=world["url"], embedder="local", transcriber="local")
    db = Database(world["url"], max_size=2)
    db.open()
    out: dict[str, Any] = {}
    try:
        searcher = S.Searcher(settings, db)  # a serving process keeps one: its query embedder is loaded once
        embedder = LocalMiniLMQueryEmbedder(settings.models)  # the query embedder the library call uses
        cases = (("vector", {"mode": "vector"}), ("hybrid", {"mode": "hybrid"}),
                 ("vector + speaker filter", {"mode": "vector", "speaker": GUESTS[7]}),
                 ("hybrid + speaker filter", {"mode": "hybrid", "speaker": GUESTS[7]}),
                 ("vector + episode filter", {"mode": "vector", "episode": "E0003"}),
                 ("hybrid + episode filter", {"mode": "hybrid", "episode": "E0003"}))
        # Load MiniLM, warm the pool, and bring each case's pages into memory (a serving process is warm;
        # without this the first case measured paid for the freshly built index alone).
        for _, options in cases:
            for q in queries[:5]:
                searcher.search(q, K, **options)
        for name, options in cases:
            times, counts, exact_fallbacks, recalls = [], [], 0, []
            for q in queries:
                t = time.perf_counter()
                hits = searcher.search(q, K, **options)
                times.append(time.perf_counter() - t)
                counts.append(len(hits))
                exact_fallbacks += hits.exact_fallback
                if name == "vector":
                    qv = embedder.embed([q]).vectors[0]
                    truth = set(exact_top(world["vectors"], qv))
                    got = {_row_index(h.episode_id, h.position) for h in hits}
                    recalls.append(len(truth & got) / K)
            out[name] = {
                "p50_ms": round(percentile(times, 50) * 1000, 1), "p95_ms": round(percentile(times, 95) * 1000, 1),
                "min_results": min(counts), "queries": len(queries), "exact_fallbacks": exact_fallbacks,
                "load": load(),
            }
            if recalls:
                out[name]["recall_at_10"] = round(float(np.mean(recalls)), 4)
            log(f"    {name}: p50 {out[name]['p50_ms']} ms, p95 {out[name]['p95_ms']} ms, min results {min(counts)}"
                + (f", recall@10 {out[name]['recall_at_10']}" if recalls else "")
                + (f", exact fallback {exact_fallbacks}x" if exact_fallbacks else ""))
        # the query embedding alone, to split the library time
        times, qvs = [], []
        for q in queries:
            t = time.perf_counter()
            qvs.append(embedder.embed([q]).vectors[0])
            times.append(time.perf_counter() - t)
        out["query embedding only"] = {"p50_ms": round(percentile(times, 50) * 1000, 1),
                                       "p95_ms": round(percentile(times, 95) * 1000, 1)}
        # the HNSW scan alone, as raw SQL on one connection (the reference figure), at the library's
        # ef_search and two lower ones (pgvector's default is 40): the latency it would save, the recall it costs
        from pgvector.psycopg import register_vector

        with psycopg.connect(world["url"], autocommit=True) as conn:
            register_vector(conn)
            for ef in dict.fromkeys((HNSW_EF_SEARCH, 60, 40)):
                conn.execute(f"SET hnsw.ef_search = {ef}")
                times, recalls = [], []
                for qv in qvs:
                    t = time.perf_counter()
                    rows = conn.execute(
                        "SELECT episode_id, position FROM embeddings WHERE model_id = 'local/all-MiniLM-L6-v2@384' "
                        "ORDER BY embedding::vector(384) <=> %s LIMIT 10", (qv,)).fetchall()
                    times.append(time.perf_counter() - t)
                    recalls.append(len(set(exact_top(world["vectors"], qv)) & {_row_index(e, p) for e, p in rows}) / K)
                out[f"raw SQL HNSW scan only, ef_search {ef}"] = {  # noqa: E501
                    "p50_ms": round(percentile(times, 50) * 1000, 1), "p95_ms": round(percentile(times, 95) * 1000, 1),
                    "recall_at_10": round(float(np.mean(recalls)), 4), "load": load()}
        log(f"    query embedding alone: p95 {out['query embedding only']['p95_ms']} ms; raw SQL HNSW scan "
            f"(ef_search {HNSW_EF_SEARCH}): p95 {out[f'raw SQL HNSW scan only, ef_search {HNSW_EF_SEARCH}']['p95_ms']} ms")
    finally:
        db.close()
    return out


def cli(world: dict[str, Any], queries: list[str], runs: int) -> dict[str, Any]:
    """`gdr search` in a new process, as a user runs it (the venv's script, and through `uv run`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GDR_"))}
    for name in ("OPENAI_API_KEY", "DEEPGRAM_API_KEY", "DB_HOST", "EMBEDDER", "TRANSCRIBER"):
        env.pop(name, None)
    env.update({"DATABASE_URL": world["url"], "COLUMNS": "120", "HF_HUB_OFFLINE": "1"})
    gdr = str(Path(sys.executable).with_name("gdr"))
    uv = shutil.which("uv") or "uv"
    out = {}
    for label, prefix in (("gdr search", [gdr]), ("uv run gdr search", [uv, "run", "gdr"])):
        times = []
        for i in range(runs):
            t = time.perf_counter()
            done = subprocess.run([*prefix, "search", queries[i % len(queries)], "-k", str(K)], env=env,
                                  capture_output=True, text=True, cwd=REPO_ROOT)
            times.append(time.perf_counter() - t)
            if done.returncode != 0:
                raise RuntimeError(f"{label} failed: {done.stderr[-2000:]}")
        out[label] = {"p50_s": round(percentile(times, 50), 2), "max_s": round(max(times), 2), "runs": runs, "load": load()}
        log(f"    {label}: p50 {out[label]['p50_s']} s, max {out[label]['max_s']} s")
    # where a new process's time goes: interpreter + imports, before any search work
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gent_disagreement_rag.cli"], env=env, check=True, cwd=REPO_ROOT)
    out["import gent_disagreement_rag.cli"] = {"seconds": round(time.perf_counter() - t, 2)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True, cwd=REPO_ROOT)
    out["python startup"] = {"seconds": round(time.perf_counter() - t, 2)}
    return out


# What the chat server's ORDER BY would be if it sorted by distance: the one form pgvector's HNSW index can serve.
CHAT_QUERY_ASCENDING = CHAT_QUERY.replace("ORDER BY similarity DESC", "ORDER BY ts.embedding <=> %s::vector")
OPENAI_DIMENSIONS = 1536


def build_chat(pg: Postgres, n: int, rng: np.random.Generator) -> dict[str, Any]:
    """n chunks with 1536-d text-embedding-3-small-shaped vectors (random topic centres + noise, normalised),
    stored and indexed as the store does it, and the reader role of `gdr db env`."""
    from pgvector.psycopg import register_vector

    from gent_disagreement_rag.providers.embedders import model_id
    from gent_disagreement_rag.storage import reader as reader_role
    from gent_disagreement_rag.storage import segments as segment_store

    mid = model_id("openai", "text-embedding-3-small", OPENAI_DIMENSIONS)
    n_topics = n // CHUNKS_PER_TOPIC
    centres = rng.standard_normal((n_topics, OPENAI_DIMENSIONS)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    topic_of = rng.permutation(np.repeat(np.arange(n_topics), CHUNKS_PER_TOPIC))[:n]
    url = pg.create_database(f"chat{n // 1000}k")
    n_episodes = n // EPISODE_CHUNKS
    with psycopg.connect(url) as conn:
        register_vector(conn)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO episodes (episode_id, title, published, status) VALUES (%s, %s, %s, 'processed')",
                            [(str(e + 1), f"Episode {e + 1}", f"2024-01-{1 + e % 28:02d}") for e in range(n_episodes)])
            cur.execute("INSERT INTO embedding_models (model_id, provider, model, dimensions, index_name) "
                        "VALUES (%s, 'openai', 'text-embedding-3-small', %s, %s)", (mid, OPENAI_DIMENSIONS, segment_store.index_name(mid)))
            with cur.copy("COPY segments (episode_id, position, speaker, start_seconds, end_seconds, text, token_count) "
                          "FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["text", "int4", "text", "float8", "float8", "text", "int4"])
                for i in range(n):
                    e, p = divmod(i, EPISODE_CHUNKS)
                    speaker = HOST if p % 2 == 0 else GUESTS[(e + p // 2) % len(GUESTS)]
                    copy.write_row((str(e + 1), p, speaker, p * 15.0, p * 15.0 + 14.0, " ".join(rng.choice(FILLER, 60)), 80))
            with cur.copy("COPY embeddings (model_id, episode_id, position, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "int4", "vector"])
                for start in range(0, n, 10_000):  # 10k rows at a time: the whole array would be 600 MB
                    block = centres[topic_of[start:start + 10_000]] + 0.9 / np.sqrt(OPENAI_DIMENSIONS) * rng.standard_normal(
                        (min(10_000, n - start), OPENAI_DIMENSIONS), dtype=np.float32)
                    block /= np.linalg.norm(block, axis=1, keepdims=True)
                    for j, vector in enumerate(block):
                        e, p = divmod(start + j, EPISODE_CHUNKS)
                        copy.write_row((mid, str(e + 1), p, vector))
        conn.commit()
        conn.execute("SET maintenance_work_mem = '1GB'")
        started = time.perf_counter()
        conn.execute(f"CREATE INDEX {segment_store.index_name(mid)} ON embeddings USING hnsw "
                     f"((embedding::vector({OPENAI_DIMENSIONS})) vector_cosine_ops) WHERE model_id = '{mid}'")
        conn.commit()
        indexed = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    reader = reader_role.ensure_reader(url, pg.home / "gdr")
    return {"url": url, "reader": reader, "centres": centres, "index_seconds": round(indexed, 1)}


def chat_query(pg: Postgres, n: int, rounds: int = 3, per_round: int = 20) -> dict[str, Any]:
    """The chat server's query at n chunks, as its psycopg2 client sends it (the vector as text, for `%s::vector`).

    Each round runs every form once per query, alternating, so load changes hit them alike; reported: the median
    over rounds of each form's p50 and p95. Planner settings compared per session: the defaults (2 parallel
    workers on this machine), no parallel workers.
    """
    import psycopg2

    rng = np.random.default_rng(n + 17)
    world = build_chat(pg, n, rng)
    reader = world["reader"]
    queries = []
    for t in rng.integers(len(world["centres"]), size=per_round):
        q = world["centres"][t] + 0.9 / np.sqrt(OPENAI_DIMENSIONS) * rng.standard_normal(OPENAI_DIMENSIONS, dtype=np.float32)
        queries.append(str((q / np.linalg.norm(q)).tolist()))
    forms = {
        "chat query (verbatim, no threshold)": (CHAT_QUERY.format(where=""), lambda v: (v, K)),
        "chat query (verbatim, threshold 0.5)": (CHAT_QUERY.format(where=CHAT_THRESHOLD), lambda v: (v, v, 0.5, K)),
        "chat query, no parallel workers": (CHAT_QUERY.format(where=""), lambda v: (v, K)),
        "same query ordered by distance ascending (HNSW)": (CHAT_QUERY_ASCENDING.format(where=""), lambda v: (v, v, K)),
    }
    conns = {}
    for name in forms:
        conn = psycopg2.connect(**reader.connect_kwargs())
        conn.autocommit = True
        if "no parallel" in name:
            conn.cursor().execute("SET max_parallel_workers_per_gather = 0")
        conns[name] = conn
    plans = {}
    for name, (statement, params) in forms.items():
        with conns[name].cursor() as cur:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, params(queries[0]))
            plans[name] = [row[0] for row in cur.fetchall()]
    per_form: dict[str, list[tuple[float, float]]] = {name: [] for name in forms}
    for r in range(rounds):
        times: dict[str, list[float]] = {name: [] for name in forms}
        for v in queries:
            for name, (statement, params) in forms.items():
                with conns[name].cursor() as cur:
                    t = time.perf_counter()
                    cur.execute(statement, params(v))
                    cur.fetchall()
                    times[name].append(time.perf_counter() - t)
        for name in forms:
            per_form[name].append((percentile(times[name], 50), percentile(times[name], 95)))
        log(f"    chat round {r + 1}: " + "; ".join(f"{name} p95 {per_form[name][-1][1] * 1000:.0f} ms" for name in forms))
    for conn in conns.values():
        conn.close()
    pg.drop_database(world["url"])
    out: dict[str, Any] = {"chunks": n, "rounds": rounds, "queries_per_round": per_round, "index_seconds": world["index_seconds"],
                           "load": load(), "forms": {}}
    for name, values in per_form.items():
        out["forms"][name] = {"p50_ms": round(float(np.median([v[0] for v in values])) * 1000, 1),
                              "p95_ms": round(float(np.median([v[1] for v in values])) * 1000, 1),
                              "plan": [line.strip().removeprefix("->  ") for line in plans[name]
                                       if line.lstrip().startswith(("->", "Limit"))]}
    return out


def hnsw_settings() -> dict[str, Any]:
    from gent_disagreement_rag.search import statements as S

    return {"m": 16, "ef_construction": 64, "ef_search": S.HNSW_EF_SEARCH, "iterative_scan": "relaxed_order",
            "max_scan_tuples": S.HNSW_MAX_SCAN_TUPLES, "distance": "cosine (vector_cosine_ops)"}


def run(pg: Postgres, *, quick: bool = False) -> dict[str, Any]:
    scales = [10_000] if quick else [10_000, 100_000]
    n_queries = 20 if quick else 100
    results: dict[str, Any] = {"hnsw": hnsw_settings(), "scales": {}}
    for n in scales:
        rng = np.random.default_rng(n)
        log(f"  search: building {n:,} chunks")
        world = build(pg, n, rng)
        log(f"  search: {n:,} chunks loaded in {world['load_seconds']} s, HNSW built in {world['index_seconds']} s")
        queries = [query_text(world["names"][rng.integers(len(world["names"]))], rng) for _ in range(n_queries)]
        entry = {"load_seconds": world["load_seconds"], "index_seconds": world["index_seconds"],
                 "index_def": world["index_def"], "library": library(world, queries)}
        if n == scales[-1]:
            entry["cli"] = cli(world, queries, 3 if quick else 7)
        results["scales"][n] = entry
        pg.drop_database(world["url"])
    log(f"  search: the chat server's query at {scales[-1]:,} chunks")
    results["chat"] = chat_query(pg, scales[-1])
    return results
