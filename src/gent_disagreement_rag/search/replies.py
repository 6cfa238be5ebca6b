"""The second stage of the ranking: a question's match is credited to the reply that answers it.

In a conversation the words of a question ("who led the group at Bell Labs?") are the words of the
query, so the question ranks first while the answer is the next turn, which shares few of them. So
when a candidate chunk is a question (it ends with "?") and the chunk after it is another speaker's
reply (not itself a question), the reply is placed just above the question: at the question's rank,
unless it already ranked higher. The question stays in the list, right after its reply. The rule
only reorders candidates, so it is the same in every mode (cosine, ts_rank_cd, RRF) and adds no
model and no round trip: the search statement fetches each candidate's next chunk with its window.

Measured on the retrieval evaluation (BENCHMARKS.md, "Retrieval evaluation").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from ..transcript import QUESTION_ENDS, ends_with
from .types import Segment


class Ranked(NamedTuple):
    """A place in the final order: the chunk, and the question it answers when it was credited."""

    episode_id: str
    position: int
    reply_to: int | None


def is_question(text: str) -> bool:
    return ends_with(text, QUESTION_ENDS)


def replies_first(ranked: Sequence[tuple[str, int]], chunk: Callable[[str, int], Segment | None],
                  allowed: Callable[[Segment], bool] = lambda segment: True) -> list[Ranked]:
    """`ranked` (episode, position) best first, with each question's reply moved just above it.

    `chunk` gives a stored chunk (None past the episode's end); a reply is credited only when `allowed`
    (the search's speaker filter: a reply by someone else is not a result of that search)."""
    out: list[Ranked] = []
    placed: set[tuple[str, int]] = set()
    for episode_id, position in ranked:
        asked, reply = chunk(episode_id, position), chunk(episode_id, position + 1)
        if (asked is not None and reply is not None and is_question(asked.text) and not is_question(reply.text)
                and reply.speaker != asked.speaker and allowed(reply) and (episode_id, position + 1) not in placed):
            out.append(Ranked(episode_id, position + 1, position))
            placed.add((episode_id, position + 1))
        if (episode_id, position) not in placed:
            out.append(Ranked(episode_id, position, None))
            placed.add((episode_id, position))
    return out
