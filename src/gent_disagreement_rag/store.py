"""Reading and writing episodes, segments and embeddings.

An episode's segments and vectors are replaced in one transaction, under a per-episode advisory
lock, with binary COPY: a rerun never duplicates rows, two writers of one episode never interleave,
and a failure halfway leaves the previous version intact. Embeddings of several models coexist;
each model has its own partial HNSW index over a cast of the shared `vector` column.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .chat_access import register_speakers
from .database import Database

if TYPE_CHECKING:  # annotations only: importing feeds (feedparser, httpx, the Deepgram SDK) cost every CLI command ~0.3 s
    from .catalogue import CatalogueEntry
    from .feeds import FeedItem

EPISODE_LOCK_NAMESPACE = 7_413_002  # first key of pg_advisory_xact_lock(int, int) for episode writes
MODEL_REGISTRATION_LOCK = 7_413_003
EPISODE_CLAIM_NAMESPACE = 7_413_004  # session locks: which run is processing an episode right now
_registered_models: dict[str, set[str]] = {}  # per database URL: models whose index is known to exist


class SegmentLike(Protocol):
    """What the store needs of a chunk (formatting's Chunk satisfies it)."""

    position: int
    speaker: str
    start: float
    end: float
    text: str
    token_count: int


@dataclass(frozen=True, slots=True)
class EpisodeRow:
    episode_id: str
    title: str | None
    published: date | None
    file_name: str | None
    audio_url: str | None
    speakers_map: dict[str, str]
    status: str
    last_error: str | None
    audio_sha256: str | None
    processed_sha256: str | None
    duration_seconds: float | None
    segments: int
    updated_at: Any
    source: str
    enclosure_length: int | None
    feed_duration_seconds: float | None
    cost_usd: float

    def as_json(self) -> dict[str, Any]:
        return {
            "episode_id": self.episode_id,
            "title": self.title,
            "status": self.status,
            "segments": self.segments,
            "error": self.last_error,
            "published": self.published.isoformat() if self.published else None,
            "file_name": self.file_name,
            "audio_url": self.audio_url,
            "duration_seconds": self.duration_seconds,
            "audio_sha256": self.audio_sha256,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "source": self.source,
            "cost_usd": self.cost_usd,
        }


def index_name(model_id: str) -> str:
    return "embeddings_hnsw_" + hashlib.sha1(model_id.encode()).hexdigest()[:12]


def segments_fingerprint(segments: Sequence[SegmentLike]) -> str:
    """Content hash of an episode's segments: unchanged segments keep other models' vectors."""
    digest = hashlib.sha256()
    for s in segments:
        digest.update(json.dumps([s.position, s.speaker, round(s.start, 3), round(s.end, 3), s.text]).encode())
    return digest.hexdigest()


def sync_catalogue(db: Database, entries: Iterable[CatalogueEntry], source: str = "catalogue") -> int:
    """Insert new catalogue episodes and refresh the metadata of known ones; status is never touched."""
    rows = [
        {"episode_id": e.episode_id, "title": e.title, "published": e.published, "file_name": e.file_name,
         "audio_url": e.audio_url, "speakers_map": Jsonb(e.speakers_map), "source": source}
        for e in entries
    ]
    _upsert_episodes(db, rows, key="episode_id")
    return len(rows)


def sync_feed(db: Database, items: Iterable[FeedItem], speakers_map: dict[str, str]) -> int:
    """Register feed episodes by guid and refresh what the feed says of known ones; status is never touched."""
    rows = [
        {"episode_id": i.episode_id, "guid": i.guid, "title": i.title, "published": i.published,
         "file_name": i.file_name, "audio_url": i.enclosure_url, "speakers_map": Jsonb(speakers_map),
         "episode_number": i.episode_number, "enclosure_length": i.enclosure_length,
         "feed_duration_seconds": i.duration_seconds, "source": "feed"}
        for i in items
    ]
    _upsert_episodes(db, rows, key="guid")
    return len(rows)


def _upsert_episodes(db: Database, rows: list[dict[str, Any]], key: str) -> None:
    """Insert episodes; for known ones (same `key`) update the other columns, only if any changed."""
    if not rows:
        return
    columns = list(rows[0])
    updated = [c for c in columns if c not in (key, "episode_id", "source")]
    statement = sql.SQL(
        "INSERT INTO episodes ({columns}) VALUES ({values}) ON CONFLICT ({key}) DO UPDATE SET {sets}, updated_at = now() "
        "WHERE ({old}) IS DISTINCT FROM ({new})"
    ).format(
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        values=sql.SQL(", ").join(map(sql.Placeholder, columns)),
        key=sql.Identifier(key),
        sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updated),
        old=sql.SQL(", ").join(sql.SQL("episodes.{}").format(sql.Identifier(c)) for c in updated),
        new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in updated),
    )
    with db.connection() as conn, conn.cursor() as cur:
        cur.executemany(statement, rows)


def ensure_model(db: Database, model_id: str, provider: str, model: str, dimensions: int) -> None:
    """Register an embedding model and build its partial HNSW cosine index, once.

    Runs in its own short transaction before any episode write: CREATE INDEX locks the table
    against writers, so doing it inside concurrent episode transactions would deadlock them.
    """
    if model_id in _registered_models.get(db.url, set()):
        return
    name = index_name(model_id)
    with db.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MODEL_REGISTRATION_LOCK,))
        registered = conn.execute("SELECT dimensions FROM embedding_models WHERE model_id = %s", (model_id,)).fetchone()
        if registered is None:
            conn.execute(
                "INSERT INTO embedding_models (model_id, provider, model, dimensions, index_name) VALUES (%s, %s, %s, %s, %s)",
                (model_id, provider, model, dimensions, name),
            )
            conn.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {name} ON embeddings "
                    "USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WHERE model_id = {model_id}"
                ).format(name=sql.Identifier(name), dims=sql.Literal(dimensions), model_id=sql.Literal(model_id))
            )
        elif registered[0] != dimensions:
            raise ValueError(f"embedding model {model_id} is registered with {registered[0]} dimensions, not {dimensions}")
    _registered_models.setdefault(db.url, set()).add(model_id)


def store_episode(
    db: Database,
    episode_id: str,
    segments: Sequence[SegmentLike],
    *,
    model_id: str,
    provider: str,
    model: str,
    vectors: np.ndarray,
    audio_sha256: str | None = None,
    duration_seconds: float | None = None,
) -> None:
    """Replace an episode's segments and this model's vectors, and mark it processed, atomically."""
    if len(segments) != len(vectors):
        raise ValueError(f"episode {episode_id}: {len(segments)} segments but {len(vectors)} vectors")
    dimensions = int(vectors.shape[1]) if len(vectors) else 0
    fingerprint = segments_fingerprint(segments)
    if dimensions:
        ensure_model(db, model_id, provider, model, dimensions)
    with db.connection() as conn:
        register_speakers(conn, {s.speaker for s in segments})
    with db.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (EPISODE_LOCK_NAMESPACE, episode_id))
        row = conn.execute(
            "SELECT segments_sha256 FROM episodes WHERE episode_id = %s FOR UPDATE", (episode_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"episode {episode_id} is not in the database (sync the catalogue first)")
        with conn.cursor() as cur:
            if row[0] != fingerprint:
                cur.execute("DELETE FROM segments WHERE episode_id = %s", (episode_id,))
                with cur.copy(
                    "COPY segments (episode_id, position, speaker, start_seconds, end_seconds, text, token_count) "
                    "FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["text", "int4", "text", "float8", "float8", "text", "int4"])
                    for s in segments:
                        copy.write_row((episode_id, s.position, s.speaker, s.start, s.end, s.text, s.token_count))
            else:
                cur.execute("DELETE FROM embeddings WHERE episode_id = %s AND model_id = %s", (episode_id, model_id))
            if dimensions:
                with cur.copy(
                    "COPY embeddings (model_id, episode_id, position, embedding) FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["text", "text", "int4", "vector"])
                    for s, vector in zip(segments, vectors, strict=True):
                        copy.write_row((model_id, episode_id, s.position, vector))
            cur.execute(
                """UPDATE episodes SET status = 'processed', last_error = NULL, segments_sha256 = %s,
                       processed_sha256 = coalesce(%s, audio_sha256), audio_sha256 = coalesce(%s, audio_sha256),
                       duration_seconds = coalesce(%s, duration_seconds), processed_at = now(), updated_at = now()
                   WHERE episode_id = %s""",
                (fingerprint, audio_sha256, audio_sha256, duration_seconds, episode_id),
            )


def mark_failed(db: Database, episode_id: str, error: str) -> None:
    """Record a failure; the stored segments of an earlier success stay searchable."""
    with db.connection() as conn:
        conn.execute(
            "UPDATE episodes SET status = 'failed', last_error = %s, updated_at = now() WHERE episode_id = %s",
            (error[:4000], episode_id),
        )


def record_audio(
    db: Database, episode_id: str, audio_sha256: str, duration_seconds: float | None = None, *, audio_size: int | None = None
) -> None:
    with db.connection() as conn:
        conn.execute(
            "UPDATE episodes SET audio_sha256 = %s, duration_seconds = coalesce(%s, duration_seconds), "
            "audio_size = coalesce(%s, audio_size), updated_at = now() WHERE episode_id = %s",
            (audio_sha256, duration_seconds, audio_size, episode_id),
        )


def list_episodes(db: Database, episode_ids: Sequence[str] | None = None) -> list[EpisodeRow]:
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT e.episode_id, e.title, e.published, e.file_name, e.audio_url, e.speakers_map, e.status,
                      e.last_error, e.audio_sha256, e.processed_sha256, e.duration_seconds,
                      (SELECT count(*) FROM segments s WHERE s.episode_id = e.episode_id), e.updated_at,
                      e.source, e.enclosure_length, e.feed_duration_seconds,
                      (SELECT coalesce(sum(p.cost_usd), 0)::float8 FROM provider_calls p WHERE p.episode_id = e.episode_id)
               FROM episodes e
               WHERE %(ids)s::text[] IS NULL OR e.episode_id = ANY(%(ids)s::text[])
               ORDER BY e.published NULLS LAST, e.episode_id""",
            {"ids": list(episode_ids) if episode_ids is not None else None},
        ).fetchall()
    return [EpisodeRow(*r) for r in rows]


def table_counts(db: Database) -> dict[str, int]:
    with db.connection() as conn:
        return {
            table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
            for table in ("episodes", "segments", "embeddings", "embedding_models", "provider_calls")
        }


def embedding_model_counts(db: Database) -> list[tuple[str, int, int]]:
    """(model_id, dimensions, vectors) for every registered model."""
    with db.connection() as conn:
        return conn.execute(
            """SELECT m.model_id, m.dimensions, count(e.model_id)
               FROM embedding_models m LEFT JOIN embeddings e USING (model_id)
               GROUP BY m.model_id, m.dimensions ORDER BY m.model_id"""
        ).fetchall()


@dataclass(frozen=True, slots=True)
class CostTotals:
    requests: int
    audio_seconds: float
    tokens: int
    cost_usd: float

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "audio_minutes": round(self.audio_seconds / 60, 2), "tokens": self.tokens,
                "cost_usd": round(self.cost_usd, 6)}


def record_call(
    db: Database, *, run_id: str | None, episode_id: str | None, stage: str, provider: str, model: str,
    requests: int, audio_seconds: float, tokens: int, cost_usd: float,
) -> None:
    """One row of the cost ledger: a provider call that really happened (cache hits record nothing)."""
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO provider_calls (run_id, episode_id, stage, provider, model, requests, audio_seconds, tokens, cost_usd) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (run_id, episode_id, stage, provider, model, requests, audio_seconds, tokens, cost_usd),
        )


def cost_totals(db: Database, *, run_id: str | None = None, episode_id: str | None = None, since: date | None = None) -> CostTotals:
    with db.connection() as conn:
        row = conn.execute(
            """SELECT coalesce(sum(requests), 0), coalesce(sum(audio_seconds), 0), coalesce(sum(tokens), 0),
                      coalesce(sum(cost_usd), 0)
               FROM provider_calls
               WHERE (%(run)s::text IS NULL OR run_id = %(run)s) AND (%(ep)s::text IS NULL OR episode_id = %(ep)s)
                 AND (%(since)s::date IS NULL OR created_at >= %(since)s::date)""",
            {"run": run_id, "ep": episode_id, "since": since},
        ).fetchone()
    return CostTotals(int(row[0]), float(row[1]), int(row[2]), float(row[3]))


def cost_by_episode(db: Database, *, since: date | None = None) -> list[tuple[str | None, str | None, CostTotals]]:
    """(episode_id, title, totals) for every episode in the ledger; None for calls of deleted episodes."""
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT p.episode_id, e.title, sum(p.requests), sum(p.audio_seconds), sum(p.tokens), sum(p.cost_usd)
               FROM provider_calls p LEFT JOIN episodes e USING (episode_id)
               WHERE %(since)s::date IS NULL OR p.created_at >= %(since)s::date
               GROUP BY p.episode_id, e.title, e.published
               ORDER BY e.published NULLS LAST, p.episode_id NULLS LAST""",
            {"since": since},
        ).fetchall()
    return [(r[0], r[1], CostTotals(int(r[2]), float(r[3]), int(r[4]), float(r[5]))) for r in rows]


def refresh_statistics(db: Database) -> None:
    """ANALYZE after a run: search's full-text side sizes its query from these statistics."""
    with db.connection() as conn:
        conn.execute("ANALYZE segments")


def claim_episode(url: str, episode_id: str) -> psycopg.Connection | None:
    """Claim an episode for this run, or None when another run (process, worker, machine) is processing it.

    A session advisory lock on a connection of its own, outside the pool: it is held for as long as the
    episode is processed, and Postgres releases it by itself if the process dies, so a crash never leaves
    an episode claimed. Close the returned connection to release the claim.
    """
    conn = psycopg.connect(url, autocommit=True)
    if conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (EPISODE_CLAIM_NAMESPACE, episode_id)).fetchone()[0]:
        return conn
    conn.close()
    return None
