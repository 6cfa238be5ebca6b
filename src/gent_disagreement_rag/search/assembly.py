"""Rows of the search statement -> hits: grouped by matching chunk, overlapping context windows merged."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import psycopg

from .models import Filters, Hit, Segment, deep_link


@dataclass(slots=True)
class _Window:
    episode_id: str
    lo: int
    hi: int
    best: tuple  # the best hit's row
    matched: list[int]
    segments: dict[int, Segment] = field(default_factory=dict)


def assemble(rows: list[tuple], k: int, context: int, audio_dir: Path) -> list[Hit]:
    """Group the rows into hits (score order), merge overlapping windows, keep the first k."""
    windows: list[_Window] = []
    hit_rows: list[tuple[tuple, dict[int, Segment]]] = []
    for _, group in groupby(rows, key=lambda row: (row[0], row[1])):  # a hit's rows come one after another
        chunk_rows = list(group)
        hit_rows.append((chunk_rows[0], {r[11]: Segment(r[11], r[12], float(r[13]), float(r[14]), r[15])
                                         for r in chunk_rows}))
    for row, segs in hit_rows:
        if len(windows) == k:  # hits below the top k do not stretch the windows above them
            break
        episode_id, position = row[0], row[1]
        lo, hi = position - context, position + context
        overlapping = [w for w in windows if w.episode_id == episode_id and w.lo <= hi and lo <= w.hi]
        if not overlapping:
            windows.append(_Window(episode_id, lo, hi, row, [position], dict(segs)))
            continue
        target, *others = overlapping  # windows are in score order: the first holds the best hit
        for w in others:
            target.lo, target.hi = min(target.lo, w.lo), max(target.hi, w.hi)
            target.matched += w.matched
            target.segments.update(w.segments)
            windows.remove(w)
        target.lo, target.hi = min(target.lo, lo), max(target.hi, hi)
        target.matched.append(position)
        target.segments.update(segs)
    hits = []
    for rank, w in enumerate(windows, 1):
        best = w.best
        segments = tuple(w.segments[p] for p in sorted(w.segments))
        main = w.segments[best[1]]  # a hit's window always holds its own chunk (embeddings reference segments)
        if len(segments) == 1:
            text = segments[0].text
        else:
            text = "\n".join(f"{s.speaker}: {s.text}" for s in segments)
        title = best[7] or (Path(best[9]).stem if best[9] else f"Episode {best[0]}")
        start, end = segments[0].start, max(s.end for s in segments)
        hits.append(Hit(
            rank=rank, score=float(best[2]), episode_id=best[0], title=title, published=best[8],
            speaker=main.speaker, start=start, end=end, text=text,
            link=deep_link(best[10], best[9], audio_dir, start),
            position=best[1], positions=tuple(s.position for s in segments), matched_positions=tuple(w.matched),
            segments=segments, vector_score=best[3], vector_rank=best[4], text_score=best[5], text_rank=best[6],
        ))
    return hits


def speaker_matches(name: str, speaker: str) -> bool:
    """The speaker filter's rule (the SQL applies the same): whole name, or leading whole words."""
    name, speaker = name.strip().lower(), speaker.lower()
    return speaker == name or speaker.startswith(name + " ")


# SQL, tested against Postgres (not in `make mutate`'s fast tests):
# pragma: no mutate block
def empty_notice(conn: psycopg.Connection, filters: Filters) -> str:
    if filters.speaker:
        speakers = [r[0] for r in conn.execute(
            "SELECT DISTINCT speaker FROM segments WHERE %(episode)s::text IS NULL OR episode_id = %(episode)s "
            "ORDER BY speaker",
            {"episode": filters.episode},
        )]
        if not any(speaker_matches(filters.speaker, s) for s in speakers):
            scope = f" in episode {filters.episode}" if filters.episode else ""
            listing = ", ".join(speakers[:30]) + (", ..." if len(speakers) > 30 else "")
            return f"no results from a speaker matching {filters.speaker!r}{scope}" + (
                f" (speakers: {listing})" if speakers else ""
            )
    if filters.any:
        return "no results match the filters"
    return "no results"
