"""Episodes as the database knows them: registered from the catalogue and feeds, their status, and
which run is processing one right now (a claim)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .database import Database
from .rows import first_value

if TYPE_CHECKING:  # annotations only: a search would otherwise import the catalogue's models and the feed reader
    from ..sources.catalogue import CatalogueEntry
    from ..sources.feeds import FeedItem

EPISODE_CLAIM_NAMESPACE = 7_413_004  # session locks: which run is processing an episode right now


class TranscriptSource(StrEnum):
    """Whose transcript made an episode's stored segments (episodes.transcript_source)."""

    PUBLISHER = "publisher"  # read from the feed's podcast:transcript
    TRANSCRIBER = "transcriber"  # Deepgram or local Whisper


@dataclass(frozen=True, slots=True)
class TranscriptOrigin:
    """What the store records of an episode's transcript: whose, the publisher's link read or tried, and
    why the publisher's was not used (None: it was, or there was none)."""

    source: TranscriptSource
    url: str | None = None
    note: str | None = None


class EpisodeState(StrEnum):
    """An episode's status between runs (episodes.status; migration 0001's CHECK). Within a run it has the
    run's own statuses (ingest/events.py EpisodeStatus)."""

    PROCESSED = "processed"
    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class EpisodeRow:
    episode_id: str
    title: str | None
    published: date | None
    file_name: str | None
    audio_url: str | None
    speakers_map: dict[str, str]
    status: EpisodeState
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
    processed_by: str | None
    segments_config: dict[str, Any] | None  # what made the stored segments (see ingest/plan.py segments_config)
    transcript_links: list[dict[str, Any]]  # the feed's podcast:transcript links (publisher.TranscriptLink.as_json)
    chapters_url: str | None
    transcript_source: str | None  # a TranscriptSource; None: not processed since it was recorded
    transcript_url: str | None  # the publisher's transcript read, or tried when transcribed instead
    transcript_note: str | None  # why the publisher's transcript was not used
    undecodable_audio: dict[str, str] | None  # the audio and transcriber that could not decode it (record_undecodable)
    transcribed_by: str | None  # the provider of its latest transcription (the cost ledger's), None: never transcribed
    model_ids: tuple[str, ...]  # the embedding models this episode has vectors of

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
            "processed_by": self.processed_by,
            "transcript_source": self.transcript_source,
            "transcript_note": self.transcript_note,
        }


def new_entry_json(entry: CatalogueEntry) -> dict[str, Any]:
    """`EpisodeRow.as_json` of a catalogue entry the database does not know yet: pending, nothing stored."""
    return {
        "episode_id": entry.episode_id, "title": entry.title, "status": EpisodeState.PENDING, "segments": 0, "error": None,
        "published": entry.published.isoformat() if entry.published else None, "file_name": entry.file_name,
        "audio_url": entry.audio_url, "duration_seconds": None, "audio_sha256": None, "updated_at": None,
        "source": "catalogue", "cost_usd": 0.0, "processed_by": None, "transcript_source": None,
        "transcript_note": None,
    }


def sync_catalogue(db: Database, entries: Iterable[CatalogueEntry], source: str = "catalogue") -> int:
    """Insert new catalogue episodes and refresh the metadata of known ones; status is never touched."""
    rows = [
        {"episode_id": e.episode_id, "title": e.title, "published": e.published, "file_name": e.file_name,
         "audio_url": e.audio_url, "speakers_map": Jsonb(e.speakers_map), "source": source}
        for e in entries
    ]
    _upsert_episodes(db, rows, key="episode_id")
    return len(rows)


def sync_feed(db: Database, items: Iterable[FeedItem], speakers_map: dict[str, str]) -> dict[str, str]:
    """Register feed episodes by guid and refresh what the feed says of known ones; status is never touched.
    Returns each item's episode_id by guid: a known guid keeps the id it has (an upgrade keeps `feed-<hash>`
    ids, so nothing is processed again and no citation changes); a new one gets its readable id, made
    unique with 6 hex digits of its guid's hash when another episode has it."""
    items = list(items)
    with db.connection() as conn:
        known = dict(conn.execute("SELECT guid, episode_id FROM episodes WHERE guid = ANY(%s)",
                                  ([i.guid for i in items],)).fetchall())
        taken = {r[0] for r in conn.execute("SELECT episode_id FROM episodes")}
    ids: dict[str, str] = {}
    for item in items:
        episode_id = known.get(item.guid)
        if episode_id is None:
            episode_id = item.readable_id
            if episode_id in taken:
                episode_id = f"{episode_id}-{hashlib.sha1(item.guid.encode()).hexdigest()[:6]}"
            if episode_id in taken:
                episode_id = item.hashed_id
            taken.add(episode_id)
        ids[item.guid] = episode_id
    rows = [
        {"episode_id": ids[i.guid], "guid": i.guid, "title": i.title, "published": i.published,
         "file_name": i.file_name(ids[i.guid]), "audio_url": i.enclosure_url, "speakers_map": Jsonb(speakers_map),
         "episode_number": i.episode_number, "season_number": i.season_number, "enclosure_length": i.enclosure_length,
         "feed_duration_seconds": i.duration_seconds, "source": "feed",
         "transcript_links": Jsonb([link.as_json() for link in i.transcripts]), "chapters_url": i.chapters_url}
        for i in items
    ]
    _upsert_episodes(db, rows, key="guid")
    return ids


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


def mark_failed(db: Database, episode_id: str, error: str) -> None:
    """Record a failure; the stored segments of an earlier success stay searchable."""
    with db.connection() as conn:
        conn.execute(
            "UPDATE episodes SET status = 'failed', last_error = %s, updated_at = now() WHERE episode_id = %s",
            (error[:4000], episode_id),
        )


def record_undecodable(db: Database, episode_id: str, audio_sha256: str | None, transcriber: str) -> None:
    """Remember that `transcriber` could not decode this audio content: plans skip the episode until either changes."""
    with db.connection() as conn:
        conn.execute("UPDATE episodes SET undecodable_audio = %s WHERE episode_id = %s",
                     (Jsonb({"audio_sha256": audio_sha256, "transcriber": transcriber}), episode_id))


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
        rows = conn.cursor(row_factory=dict_row).execute(
            """SELECT e.episode_id, e.title, e.published, e.file_name, e.audio_url, e.speakers_map, e.status,
                      e.last_error, e.audio_sha256, e.processed_sha256, e.duration_seconds,
                      (SELECT count(*) FROM segments s WHERE s.episode_id = e.episode_id) AS segments, e.updated_at,
                      e.source, e.enclosure_length, e.feed_duration_seconds,
                      (SELECT coalesce(sum(p.cost_usd), 0)::float8 FROM provider_calls p WHERE p.episode_id = e.episode_id)
                        AS cost_usd,
                      e.processed_by, e.segments_config, e.transcript_links, e.chapters_url, e.transcript_source,
                      e.transcript_url, e.transcript_note,
                      e.undecodable_audio,
                      (SELECT p.provider FROM provider_calls p WHERE p.episode_id = e.episode_id AND p.stage = 'transcribe'
                       ORDER BY p.created_at DESC LIMIT 1) AS transcribed_by,
                      ARRAY(SELECT m.model_id FROM embedding_models m WHERE EXISTS (SELECT 1 FROM embeddings x
                            WHERE x.model_id = m.model_id AND x.episode_id = e.episode_id) ORDER BY 1) AS model_ids
               FROM episodes e
               WHERE %(ids)s::text[] IS NULL OR e.episode_id = ANY(%(ids)s::text[])
               ORDER BY e.published NULLS LAST, e.episode_id""",
            {"ids": list(episode_ids) if episode_ids is not None else None},
        ).fetchall()
    return [EpisodeRow(**{**r, "status": EpisodeState(r["status"]), "model_ids": tuple(r["model_ids"])}) for r in rows]


def table_counts(db: Database) -> dict[str, int]:
    with db.connection() as conn:
        return {
            table: first_value(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))))
            for table in ("episodes", "segments", "embeddings", "embedding_models", "provider_calls")
        }


@dataclass(frozen=True, slots=True)
class Claim:
    """An episode claimed by `wait_for_claim`: the lock's connection, and whether another run processed the
    episode while this one waited for it (then there is nothing left to do)."""

    connection: psycopg.Connection
    done_meanwhile: bool

    def close(self) -> None:
        self.connection.close()


def wait_for_claim(url: str, episode_id: str) -> Claim:
    """Claim an episode, waiting while another run (process, worker, machine) has it. That run may be one
    whose parent died, still finishing the episode on a worker: waiting for it, then finding the episode
    processed, neither pays for it twice nor leaves it undone.

    A session advisory lock on a connection of its own, outside the pool: it is held for as long as the
    episode is processed, and Postgres releases it by itself if the process dies, so a crash never leaves
    an episode claimed. Close the claim to release it."""
    conn = psycopg.connect(url, autocommit=True)
    try:
        since = first_value(conn.execute("SELECT clock_timestamp()"))
        locked = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (EPISODE_CLAIM_NAMESPACE, episode_id))
        if not first_value(locked):
            conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (EPISODE_CLAIM_NAMESPACE, episode_id))
            row = conn.execute("SELECT status = 'processed' AND processed_at >= %s FROM episodes WHERE episode_id = %s",
                               (since, episode_id)).fetchone()
            return Claim(conn, bool(row and row[0]))
    except BaseException:
        conn.close()
        raise
    return Claim(conn, False)
