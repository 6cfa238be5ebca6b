"""The cost ledger: one row per provider call that really happened (cache hits record nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, NamedTuple

from psycopg.rows import class_row, dict_row

from .database import Database


@dataclass(frozen=True, slots=True)
class CostTotals:
    requests: int
    audio_seconds: float
    tokens: int
    cost_usd: float
    saved_usd: float = 0.0  # what transcriptions avoided by reading the publisher's transcripts would have cost
    publisher_transcripts: int = 0  # transcripts read from the publisher instead of transcribed

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "audio_minutes": round(self.audio_seconds / 60, 2), "tokens": self.tokens,
                "cost_usd": round(self.cost_usd, 6), "saved_usd": round(self.saved_usd, 6),
                "publisher_transcripts": self.publisher_transcripts}


# The rest is SQL, tested against Postgres (not in `make mutate`'s fast tests):
# pragma: no mutate block

# CostTotals' columns (of provider_calls aliased `{p}`), as the Python types it holds: numeric sums as float8.
_TOTALS = """coalesce(sum({p}requests), 0)::bigint AS requests, coalesce(sum({p}audio_seconds), 0)::float8 AS audio_seconds,
                      coalesce(sum({p}tokens), 0)::bigint AS tokens, coalesce(sum({p}cost_usd), 0)::float8 AS cost_usd,
                      coalesce(sum({p}saved_usd), 0)::float8 AS saved_usd,
                      count(*) FILTER (WHERE {p}provider = 'publisher') AS publisher_transcripts"""


def record_call(
    db: Database, *, run_id: str | None, episode_id: str | None, stage: str, provider: str, model: str,
    requests: int, audio_seconds: float, tokens: int, cost_usd: float, saved_usd: float = 0.0,
) -> None:
    """One row of the cost ledger: a provider call that really happened (cache hits record nothing), or a
    transcript read from the publisher instead (provider 'publisher', no request, `saved_usd`)."""
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO provider_calls (run_id, episode_id, stage, provider, model, requests, audio_seconds, tokens, "
            "cost_usd, saved_usd) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (run_id, episode_id, stage, provider, model, requests, audio_seconds, tokens, cost_usd, saved_usd),
        )


def cost_totals(db: Database, *, run_id: str | None = None, episode_id: str | None = None,
                since: date | None = None) -> CostTotals:
    with db.connection() as conn:
        row = conn.cursor(row_factory=class_row(CostTotals)).execute(
            f"""SELECT {_TOTALS.format(p="")}
               FROM provider_calls
               WHERE (%(run)s::text IS NULL OR run_id = %(run)s) AND (%(ep)s::text IS NULL OR episode_id = %(ep)s)
                 AND (%(since)s::date IS NULL OR created_at >= %(since)s::date)""",
            {"run": run_id, "ep": episode_id, "since": since},
        ).fetchone()
    assert row is not None  # an aggregate without GROUP BY: always one row
    return row


class EpisodeCost(NamedTuple):
    episode_id: str | None  # None: calls of a deleted episode
    title: str | None
    totals: CostTotals


def cost_by_episode(db: Database, *, since: date | None = None) -> list[EpisodeCost]:
    """The totals of every episode in the ledger."""
    with db.connection() as conn:
        rows = conn.cursor(row_factory=dict_row).execute(
            f"""SELECT p.episode_id, e.title, {_TOTALS.format(p="p.")}
               FROM provider_calls p LEFT JOIN episodes e USING (episode_id)
               WHERE %(since)s::date IS NULL OR p.created_at >= %(since)s::date
               GROUP BY p.episode_id, e.title, e.published
               ORDER BY e.published NULLS LAST, p.episode_id NULLS LAST""",
            {"since": since},
        ).fetchall()
    return [EpisodeCost(r.pop("episode_id"), r.pop("title"), CostTotals(**r)) for r in rows]
