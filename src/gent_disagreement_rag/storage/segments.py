"""An episode's segments and their embeddings.

An episode's segments and vectors are replaced in one transaction, under a per-episode advisory
lock, with binary COPY: a rerun never duplicates rows, two writers of one episode never interleave,
and a failure halfway leaves the previous version intact. Embeddings of several models coexist;
each model has its own partial HNSW index over a cast of the shared `vector` column.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from ..sources.publisher import chapter_at
from .database import Database
from .speakers import register_speakers
from .vector_index import create_sql, kind_for

if TYPE_CHECKING:
    from ..sources.publisher import Chapter
    from ..text.chunking import Chunk
    from .episodes import TranscriptOrigin

EPISODE_LOCK_NAMESPACE = 7_413_002  # first key of pg_advisory_xact_lock(int, int) for episode writes
MODEL_REGISTRATION_LOCK = 7_413_003


def index_name(model_id: str) -> str:
    return "embeddings_hnsw_" + hashlib.sha1(model_id.encode()).hexdigest()[:12]


def segments_fingerprint(segments: Sequence[Chunk], chapters: Sequence[str | None] = ()) -> str:
    """Content hash of an episode's segments (and their chapters' titles, when there are any: without,
    the hash is what it was before chapters): unchanged segments keep other models' vectors."""
    digest = hashlib.sha256()
    for s in segments:
        digest.update(json.dumps([s.position, s.speaker, round(s.start, 3), round(s.end, 3), s.text]).encode())
    if any(chapters):
        digest.update(json.dumps(list(chapters)).encode())
    return digest.hexdigest()


def segment_chapters(segments: Sequence[Chunk], chapters: Sequence[Chapter]) -> list[str | None]:
    """Each segment's chapter title: the chapter playing at the segment's middle (a chunk straddling a
    boundary belongs where most of it is)."""
    ordered = sorted(chapters, key=lambda c: c.start)
    return [(c.title if (c := chapter_at(ordered, (s.start + s.end) / 2)) else None) for s in segments]


def ensure_model(db: Database, model_id: str, provider: str, model: str, dimensions: int) -> None:
    """Register an embedding model and build its partial HNSW cosine index, once.

    Runs in its own short transaction before any episode write: CREATE INDEX locks the table
    against writers, so doing it inside concurrent episode transactions would deadlock them.
    """
    if model_id in db.registered_models:
        return
    name = index_name(model_id)
    kind = kind_for(dimensions)
    with db.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MODEL_REGISTRATION_LOCK,))
        registered = conn.execute("SELECT dimensions FROM embedding_models WHERE model_id = %s", (model_id,)).fetchone()
        if registered is None:
            conn.execute(
                "INSERT INTO embedding_models (model_id, provider, model, dimensions, index_name, index_kind) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (model_id, provider, model, dimensions, name, kind.value),
            )
            conn.execute(create_sql(name, model_id, dimensions, kind))
        elif registered[0] != dimensions:
            raise ValueError(f"embedding model {model_id} is registered with {registered[0]} dimensions, not {dimensions}")
    db.registered_models.add(model_id)


def store_episode(
    db: Database,
    episode_id: str,
    segments: Sequence[Chunk],
    *,
    model_id: str,
    provider: str,
    model: str,
    vectors: np.ndarray,
    audio_sha256: str | None = None,
    duration_seconds: float | None = None,
    processed_by: str | None = None,
    segments_config: dict[str, Any] | None = None,
    chapters: Sequence[Chapter] = (),
    origin: TranscriptOrigin | None = None,
) -> None:
    """Replace an episode's segments, chapters and this model's vectors, and mark it processed, atomically.
    `segments_config` records what made the segments, so that a later settings change shows them stale;
    `origin` whose transcript they come from (None: left as it was)."""
    if len(segments) != len(vectors):
        raise ValueError(f"episode {episode_id}: {len(segments)} segments but {len(vectors)} vectors")
    dimensions = int(vectors.shape[1]) if len(vectors) else 0
    titles = segment_chapters(segments, chapters)
    fingerprint = segments_fingerprint(segments, titles)
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
                    "COPY segments (episode_id, position, speaker, start_seconds, end_seconds, text, token_count, "
                    "chapter) FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["text", "int4", "text", "float8", "float8", "text", "int4", "text"])
                    for s, title in zip(segments, titles, strict=True):
                        copy.write_row((episode_id, s.position, s.speaker, s.start, s.end, s.text, s.token_count,
                                        title))
            else:
                cur.execute("DELETE FROM embeddings WHERE episode_id = %s AND model_id = %s", (episode_id, model_id))
            if dimensions:
                with cur.copy(
                    "COPY embeddings (model_id, episode_id, position, embedding) FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["text", "text", "int4", "vector"])
                    for s, vector in zip(segments, vectors, strict=True):
                        copy.write_row((model_id, episode_id, s.position, vector))
            cur.execute("DELETE FROM chapters WHERE episode_id = %s", (episode_id,))
            cur.executemany(
                "INSERT INTO chapters (episode_id, position, start_seconds, end_seconds, title, url) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                [(episode_id, c.position, c.start, c.end, c.title, c.url) for c in chapters],
            )
            if origin is not None:
                cur.execute(
                    "UPDATE episodes SET transcript_source = %s, transcript_url = %s, transcript_note = %s "
                    "WHERE episode_id = %s",
                    (origin.source.value, origin.url, origin.note, episode_id),
                )
            cur.execute(
                """UPDATE episodes SET status = 'processed', last_error = NULL, segments_sha256 = %s,
                       processed_sha256 = coalesce(%s, audio_sha256), audio_sha256 = coalesce(%s, audio_sha256),
                       duration_seconds = coalesce(%s, duration_seconds), processed_by = %s, processed_at = now(),
                       segments_config = %s, updated_at = now()
                   WHERE episode_id = %s""",
                (fingerprint, audio_sha256, audio_sha256, duration_seconds, processed_by,
                 Jsonb(segments_config) if segments_config is not None else None, episode_id),
            )


class ModelCount(NamedTuple):
    model_id: str
    dimensions: int
    vectors: int


def embedding_model_counts(db: Database) -> list[ModelCount]:
    """Every registered model with its stored vectors."""
    with db.connection() as conn:
        return conn.cursor(row_factory=class_row(ModelCount)).execute(
            """SELECT m.model_id, m.dimensions, count(e.model_id) AS vectors
               FROM embedding_models m LEFT JOIN embeddings e USING (model_id)
               GROUP BY m.model_id, m.dimensions ORDER BY m.model_id"""
        ).fetchall()


def refresh_statistics(db: Database) -> None:
    """ANALYZE after a run: search's full-text side sizes its query from these statistics."""
    with db.connection() as conn:
        conn.execute("ANALYZE segments")
