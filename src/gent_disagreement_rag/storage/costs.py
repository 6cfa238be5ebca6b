"""The cost ledger: one row per provider call that really happened (cache hits record nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

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


def cost_totals(db: Database, *, run_id: str | None = None, episode_id: str | None = None, since: date | None = None) -> CostTotals:
    with db.connection() as conn:
        row = conn.execute(
            """SELECT coalesce(sum(requests), 0), coalesce(sum(audio_seconds), 0), coalesce(sum(tokens), 0),
                      coalesce(sum(cost_usd), 0), coalesce(sum(saved_usd), 0),
                      count(*) FILTER (WHERE provider = 'publisher')
               FROM provider_calls
               WHERE (%(run)s::text IS NULL OR run_id = %(run)s) AND (%(ep)s::text IS NULL OR episode_id = %(ep)s)
                 AND (%(since)s::date IS NULL OR created_at >= %(since)s::date)""",
            {"run": run_id, "ep": episode_id, "since": since},
        ).fetchone()
    return CostTotals(int(row[0]), float(row[1]), int(row[2]), float(row[3]), float(row[4]), int(row[5]))


def cost_by_episode(db: Database, *, since: date | None = None) -> list[tuple[str | None, str | None, CostTotals]]:
    """(episode_id, title, totals) for every episode in the ledger; None for calls of deleted episodes."""
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT p.episode_id, e.title, sum(p.requests), sum(p.audio_seconds), sum(p.tokens), sum(p.cost_usd),
                      sum(p.saved_usd), count(*) FILTER (WHERE p.provider = 'publisher')
               FROM provider_calls p LEFT JOIN episodes e USING (episode_id)
               WHERE %(since)s::date IS NULL OR p.created_at >= %(since)s::date
               GROUP BY p.episode_id, e.title, e.published
               ORDER BY e.published NULLS LAST, p.episode_id NULLS LAST""",
            {"since": since},
        ).fetchall()
    return [(r[0], r[1], CostTotals(int(r[2]), float(r[3]), int(r[4]), float(r[5]), float(r[6]), int(r[7])))
            for r in rows]
