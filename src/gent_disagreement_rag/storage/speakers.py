"""Speaker names' chat ids (migration 0004's `chat.speaker_ids`), registered before an episode is stored."""

from __future__ import annotations

import psycopg


def register_speakers(conn: psycopg.Connection, names: set[str]) -> None:
    """Give new speaker names their chat id in a short transaction of their own, before an episode's store
    transaction: the segments trigger then finds them committed and waits for no one (inserting them inside
    the store would hold every new name, and so every concurrent episode naming it, until that store commits)."""
    conn.execute("INSERT INTO chat.speaker_ids (name) SELECT unnest(%s::text[]) ORDER BY 1 ON CONFLICT (name) DO NOTHING",
                 (sorted(names),))
