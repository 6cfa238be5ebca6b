"""Each embedding model's HNSW index: its kind, its definition, and building it over a full store.

Every model has one partial HNSW cosine index over a cast of the shared `embedding` column (WHERE model_id = ...).
Search must spell its distance exactly as the index does (search/statements.py asks `distance_sql`), or the
planner cannot use it.

Why the kind depends on the dimensions: pgvector's HNSW indexes `vector` up to 2,000 dimensions and `halfvec` up to
4,000, so a wider model (text-embedding-3-large's 3,072) is indexed over half-precision copies; recall@10 and build
time were the same as full precision's at 1536-d, at half the index size (BENCHMARKS.md section 9). Up to 2,000
dimensions the index stays `vector`: the chat views expose `embedding::vector(1536)`, and the user's chat server's
`ORDER BY embedding <=> q::vector` is served only by an index over that same expression (tests/test_chat_contract.py).
Scores are always computed in full precision: the half-precision distance only orders the walk.

Why the build settings: pgvector builds a graph much faster when it fits `maintenance_work_mem` (a graph that did
not fit made the build 1.6x slower at 50k chunks), and a parallel worker per spare core helps while a worker per
core fights the leader (section 9's "Index build settings").
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from enum import StrEnum

from psycopg import sql

from .database import Database
from .rows import first_value

HALFVEC_ABOVE_DIMENSIONS = 2000  # vector's HNSW limit
GRAPH_BYTES_PER_ELEMENT = 700  # an element's neighbour lists (2m at layer 0, m = 16) and bookkeeping
GRAPH_SPARE = 1.2
REINDEX_LOCK_NAMESPACE = 7_413_004  # first key of pg_advisory_lock(int, int); the second is hashtext(model_id)
LOCK_POLL_SECONDS = 0.5


class IndexKind(StrEnum):
    VECTOR = "vector"
    HALFVEC = "halfvec"


def kind_for(dimensions: int) -> IndexKind:
    return IndexKind.HALFVEC if dimensions > HALFVEC_ABOVE_DIMENSIONS else IndexKind.VECTOR


def distance_sql(kind: IndexKind, dimensions: int, column: str = "e.embedding", query: str = "%(qv)s") -> str:
    """Cosine distance written as the model's index is defined (the planner matches the expression)."""
    return f"{column}::{kind.value}({dimensions}) <=> {query}::{kind.value}({dimensions})"


def create_sql(name: str, model_id: str, dimensions: int, kind: IndexKind, *, concurrently: bool = False
               ) -> sql.Composed:
    return sql.SQL(
        "CREATE INDEX {concurrently} IF NOT EXISTS {name} ON embeddings "
        "USING hnsw ((embedding::{kind}({dims})) {ops}) WHERE model_id = {model_id}"
    ).format(concurrently=sql.SQL("CONCURRENTLY" if concurrently else ""), name=sql.Identifier(name),
             kind=sql.SQL(kind.value), dims=sql.Literal(dimensions), ops=sql.SQL(f"{kind.value}_cosine_ops"),
             model_id=sql.Literal(model_id))


@dataclass(frozen=True, slots=True)
class BuildSettings:
    maintenance_work_mem_mb: int
    parallel_workers: int

    @classmethod
    def for_graph(cls, rows: int, dimensions: int, kind: IndexKind, cores: int | None = None,
                  ram_mb: int | None = None) -> BuildSettings:
        """Memory for the whole graph (capped at half the machine's RAM: past that pgvector builds on disk,
        slower but within memory) and a parallel worker per core beyond the leader's."""
        element = dimensions * (2 if kind is IndexKind.HALFVEC else 4) + GRAPH_BYTES_PER_ELEMENT
        graph_mb = int(rows * element * GRAPH_SPARE / 2**20) + 64
        ram_mb = ram_mb or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        cores = cores or os.cpu_count() or 1
        return cls(min(graph_mb, ram_mb // 2), max(0, cores - 1))

    def statements(self) -> list[str]:
        return [f"SET maintenance_work_mem = '{self.maintenance_work_mem_mb}MB'",
                f"SET max_parallel_maintenance_workers = {self.parallel_workers}"]


@dataclass(frozen=True, slots=True)
class Rebuilt:
    model_id: str
    rows: int
    kind: IndexKind
    previous_kind: IndexKind
    settings: BuildSettings


def rebuild_model_index(db: Database, model_id: str) -> Rebuilt:
    """Build a model's HNSW index afresh over its stored vectors, in the kind its dimensions call for, while
    searches and writers go on (CREATE INDEX CONCURRENTLY), then swap it in with the model's registered kind in
    one short transaction. A build killed halfway leaves an index under the new name, dropped by the next try;
    the old index serves meanwhile. For after a bulk import (README "How far one machine goes")."""
    with db.connection() as conn:
        row = conn.execute("SELECT dimensions, index_kind, index_name FROM embedding_models WHERE model_id = %s",
                           (model_id,)).fetchone()
        if row is None:
            raise ValueError(f"no embedding model {model_id!r} is registered in this database")
        dimensions, previous, name = int(row[0]), IndexKind(row[1]), str(row[2])
        rows = int(first_value(conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s", (model_id,))))
    kind = kind_for(dimensions)
    settings = BuildSettings.for_graph(rows, dimensions, kind)
    building = name + "_new"
    with db.connection() as conn:
        conn.autocommit = True  # CONCURRENTLY cannot run inside a transaction
        # One rebuild of a model at a time. A rebuild whose client was killed goes on building in its server
        # process, holding this lock, until the statement ends: the next one waits for it instead of deadlocking
        # on the half-built index it would drop. It polls: a statement waiting on the lock would hold a snapshot,
        # which the other's CREATE INDEX CONCURRENTLY waits for in turn.
        while not first_value(conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                           (REINDEX_LOCK_NAMESPACE, model_id))):
            time.sleep(LOCK_POLL_SECONDS)
        try:
            for statement in settings.statements():
                conn.execute(statement)
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(building)))
            conn.execute(create_sql(building, model_id, dimensions, kind, concurrently=True))
            with conn.transaction():
                conn.execute("UPDATE embedding_models SET index_kind = %s WHERE model_id = %s", (kind.value, model_id))
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(name)))
            conn.execute("ANALYZE embeddings")  # after a bulk import the planner's row counts are stale too
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (REINDEX_LOCK_NAMESPACE, model_id))
            conn.execute("RESET maintenance_work_mem")
            conn.execute("RESET max_parallel_maintenance_workers")
            conn.autocommit = False
    return Rebuilt(model_id, rows, kind, previous, settings)
