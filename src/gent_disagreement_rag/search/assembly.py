"""Rows of the search statement -> hits: grouped by matching chunk, replies credited, overlapping context windows
merged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from .models import Credit, Filters, Hit, Segment, deep_link
from .replies import replies_first


@dataclass(slots=True)
class _Window:
    episode_id: str
    lo: int
    hi: int
    best: tuple  # the best hit's row
    credit: Credit | None  # the best hit's, when it is a credited reply
    matched: list[int]
    segments: dict[int, Segment] = field(default_factory=dict)


def assemble(rows: list[tuple], k: int, context: int, audio_dir: Path, speaker: str | None = None) -> list[Hit]:
    """Group the rows into candidates (score order), credit replies (replies.py), merge overlapping windows,
    keep the first k. Each candidate's rows hold its window and the chunk after it; `speaker` is the search's
    speaker filter, which a credited reply must pass too."""
    candidates: dict[tuple[str, int], tuple] = {}
    chunks: dict[tuple[str, int], Segment] = {}
    for row in rows:
        candidates.setdefault((row[0], row[1]), row)
        chunks[(row[0], row[11])] = Segment(row[11], row[12], float(row[13]), float(row[14]), row[15], row[16])
    windows: list[_Window] = []

    def allowed(reply: Segment) -> bool:
        return speaker is None or speaker_matches(speaker, reply.speaker)

    for place in replies_first(list(candidates), lambda episode_id, position: chunks.get((episode_id, position)),
                               allowed):
        if len(windows) == k:  # hits below the top k do not stretch the windows above them
            break
        episode_id, position = place.episode_id, place.position
        row, credit = candidates.get((episode_id, position)), None
        if place.reply_to is not None:
            asked = candidates[(episode_id, place.reply_to)]
            credit = Credit(place.reply_to, asked[3], asked[5])
            # It ranks by the question's score (candidates come best first: never below its own score).
            if row is None:  # not a candidate itself: its own scores are unknown
                row = (episode_id, position, asked[2], None, None, None, None, *asked[7:11])
            else:
                row = (*row[:2], asked[2], *row[3:])
        assert row is not None
        lo, hi = position - context, position + context
        segs = {p: chunks[(episode_id, p)] for p in range(lo, hi + 1) if (episode_id, p) in chunks}
        overlapping = [w for w in windows if w.episode_id == episode_id and w.lo <= hi and lo <= w.hi]
        if not overlapping:
            windows.append(_Window(episode_id, lo, hi, row, credit, [position], segs))
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
            speaker=main.speaker, start=start, end=end, text=text, chapter=main.chapter,
            link=deep_link(best[10], best[9], audio_dir, main.start),
            position=best[1], positions=tuple(s.position for s in segments), matched_positions=tuple(w.matched),
            segments=segments, vector_score=best[3], vector_rank=best[4], text_score=best[5], text_rank=best[6],
            reply_to=w.credit,
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
