"""Attempts at an episode within a run: which worker took it, when, and how it ended. A worker (or machine)
that dies leaves its attempt open, so a run's summary can name every worker an episode ran on, and the next
attempt can tell that an earlier one was cut short."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from psycopg.rows import class_row

from .database import Database


class AttemptOutcome(StrEnum):
    PROCESSED = "processed"
    FAILED = "failed"
    ELSEWHERE = "elsewhere"  # another run had it; this attempt waited, then found nothing left to do


@dataclass(frozen=True, slots=True)
class Attempt:
    id: int
    run_id: str
    episode_id: str
    worker: str
    flow_run_id: str | None
    started_at: datetime
    ended_at: datetime | None
    outcome: AttemptOutcome | None

    @property
    def died(self) -> bool:
        """Started and never ended: its process went away mid-episode."""
        return self.ended_at is None


def start_attempt(db: Database, run_id: str, episode_id: str, worker: str) -> int:
    with db.connection() as conn:
        row = conn.execute("INSERT INTO episode_attempts (run_id, episode_id, worker) VALUES (%s, %s, %s) RETURNING id",
                           (run_id, episode_id, worker)).fetchone()
    assert row is not None
    return int(row[0])


def set_flow_run(db: Database, attempt_id: int, flow_run_id: str) -> None:
    with db.connection() as conn:
        conn.execute("UPDATE episode_attempts SET flow_run_id = %s WHERE id = %s", (flow_run_id, attempt_id))


def end_attempt(db: Database, attempt_id: int, outcome: AttemptOutcome) -> None:
    with db.connection() as conn:
        conn.execute("UPDATE episode_attempts SET ended_at = now(), outcome = %s WHERE id = %s",
                     (outcome.value, attempt_id))


def attempts_of(db: Database, run_id: str, episode_id: str | None = None) -> list[Attempt]:
    """A run's attempts (of one episode, or all), oldest first."""
    with db.connection() as conn, conn.cursor(row_factory=class_row(Attempt)) as cur:
        return cur.execute(
            """SELECT id, run_id, episode_id, worker, flow_run_id, started_at, ended_at, outcome
               FROM episode_attempts WHERE run_id = %s AND (%s::text IS NULL OR episode_id = %s) ORDER BY id""",
            (run_id, episode_id, episode_id),
        ).fetchall()
