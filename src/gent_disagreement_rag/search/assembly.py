"""Rows of the search statement -> hits: grouped by matching chunk, replies credited, overlapping context windows
merged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ..sources import display_title
from .replies import replies_first
from .statements import SearchRow
from .types import Credit, Filters, Hit, Segment, deep_link


@dataclass(slots=True)
class _Window:
    episode_id: str
    lo: int
    hi: int
    best: SearchRow  # the best hit's row
    credit: Credit | None  # the best hit's, when it is a credited reply
    matched: list[int]
    segments: dict[int, Segment] = field(default_factory=dict)


def assemble(rows: Sequence[SearchRow], k: int, context: int, audio_dir: Path, speaker: str | None = None) -> list[Hit]:
    """Group the rows into candidates (score order), credit replies (replies.py), merge overlapping windows,
    keep the first k. Each candidate's rows hold its window and the chunk after it; `speaker` is the search's
    speaker filter, which a credited reply must pass too."""
    candidates: dict[tuple[str, int], SearchRow] = {}
    chunks: dict[tuple[str, int], Segment] = {}
    for each in rows:
        candidates.setdefault((each.episode_id, each.position), each)
        chunks[(each.episode_id, each.chunk_position)] = Segment(each.chunk_position, each.speaker, float(each.start_seconds),
                                                               float(each.end_seconds), each.text, each.chapter)
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
            credit = Credit(place.reply_to, asked.vscore, asked.tscore)
            # It ranks by the question's score (candidates come best first: never below its own score).
            if row is None:  # not a candidate itself: its own scores are unknown (its episode is the question's)
                row = asked._replace(position=position, vscore=None, vrank=None, tscore=None, trank=None)
            else:
                row = row._replace(score=asked.score)
        if row is None:
            raise AssertionError(f"hit {episode_id}/{position} is neither a candidate nor a credited reply")
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
        main = w.segments[best.position]  # a hit's window always holds its own chunk (embeddings reference segments)
        if len(segments) == 1:
            text = segments[0].text
        else:
            text = "\n".join(f"{s.speaker}: {s.text}" for s in segments)
        start, end = segments[0].start, max(s.end for s in segments)
        hits.append(Hit(
            rank=rank, score=float(best.score), episode_id=best.episode_id,
            title=display_title(best.title, best.file_name, best.episode_id), published=best.published,
            speaker=main.speaker, start=start, end=end, text=text, chapter=main.chapter,
            link=deep_link(best.audio_url, best.file_name, audio_dir, main.start),
            position=best.position, positions=tuple(s.position for s in segments), matched_positions=tuple(w.matched),
            segments=segments, vector_score=best.vscore, vector_rank=best.vrank, text_score=best.tscore,
            text_rank=best.trank,
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
