"""Search results assembled from the fused rows (search/assembly.py, search/replies.py): one hit per chunk with
its title and link, context windows that merge when they share a chunk, the speaker filter, and a question's match
credited to the reply after it. Expected values are worked out by hand."""

from __future__ import annotations

from datetime import date

import pytest

from gent_disagreement_rag.search.assembly import assemble, speaker_matches
from gent_disagreement_rag.search.replies import is_question, replies_first
from gent_disagreement_rag.search.statements import SearchRow
from gent_disagreement_rag.search.types import Credit, Hit, Segment

pytestmark = pytest.mark.fast  # no Postgres, no Prefect, no Whisper, no subprocess (TESTING.md)

# --- search: relevance (search/relevance.py) and hits from the fused rows (search/assembly.py) ---


# Episodes as the search statement's join sees them: (title, file_name, audio_url) and chunks 0..9, chunk p by
# Ann (even p) or Bo (odd p) from 10p s to 10p + 9.5 s.
_EPISODES = {"E1": ("First", date(2024, 5, 1), "e1.mp3", "https://x/e1.mp3"), "E2": (None, None, "e2.mp3", None),
             "E3": (None, None, None, None)}


def _chunk(position: int) -> tuple:
    return position, "Ann" if position % 2 == 0 else "Bo", 10.0 * position, 10.0 * position + 9.5


def _fused_rows(hits: list[tuple[str, int, float]], context: int,
                questions: frozenset[tuple[str, int]] = frozenset()) -> list[SearchRow]:
    """The statement's rows for `hits` (episode, position, score; best first): one per chunk of each hit's window
    and the chunk after it (a question's reply, replies.py). The chunks at `questions` end with "?"."""
    rows = []
    for n, (episode, position, score) in enumerate(hits, 1):
        title, published, file_name, audio_url = _EPISODES[episode]
        for p in range(max(0, position - context), min(9, position + context + 1) + 1):
            _, speaker, start, end = _chunk(p)
            text = f"{episode.lower()}-{p}" + ("?" if (episode, p) in questions else "")
            rows.append(SearchRow(episode, position, score, vscore=score - 0.5, vrank=n, tscore=score / 10, trank=n + 1,
                                  title=title, published=published, file_name=file_name, audio_url=audio_url,
                                  chunk_position=p, speaker=speaker, start_seconds=start, end_seconds=end, text=text,
                                  chapter=None, vector_candidates=50))
    return rows


def test_assembled_hits_without_context_are_one_chunk_each_with_title_link_and_scores(tmp_path) -> None:
    hits = assemble(_fused_rows([("E1", 3, 0.9), ("E2", 1, 0.8), ("E3", 4, 0.7)], 0), 5, 0, tmp_path)
    assert [(h.rank, h.episode_id, h.title, h.published, h.link) for h in hits] == [
        (1, "E1", "First", date(2024, 5, 1), "https://x/e1.mp3#t=30"),
        (2, "E2", "e2", None, f"{tmp_path}/e2.mp3#t=10"),  # no title: the file's name; no audio URL: the local file
        (3, "E3", "Episode E3", None, None),
    ]
    first = hits[0]
    assert (first.speaker, first.start, first.end, first.text) == ("Bo", 30.0, 39.5, "e1-3")  # no speaker prefix
    assert (first.position, first.positions, first.matched_positions) == (3, (3,), (3,))
    assert (first.score, first.vector_score, first.vector_rank, first.text_score, first.text_rank) == (
        0.9, pytest.approx(0.4), 1, pytest.approx(0.09), 2)
    assert [s.text for s in first.segments] == ["e1-3"]
    assert [h.rank for h in assemble(_fused_rows([("E1", 3, 0.9), ("E2", 1, 0.8)], 0), 1, 0, tmp_path)] == [1]


def test_overlapping_windows_merge_into_one_result_led_by_the_best_hit(tmp_path) -> None:
    rows = _fused_rows([("E1", 5, 0.9), ("E1", 6, 0.8), ("E2", 1, 0.7)], 1)
    merged, other = assemble(rows, 2, 1, tmp_path)
    assert (merged.rank, merged.score, merged.position, merged.speaker) == (1, 0.9, 5, "Bo")  # the best hit's chunk
    assert (merged.positions, merged.matched_positions) == ((4, 5, 6, 7), (5, 6))
    assert (merged.start, merged.end, merged.link) == (40.0, 79.5, "https://x/e1.mp3#t=50")  # plays the cited chunk
    assert merged.text == "Ann: e1-4\nBo: e1-5\nAnn: e1-6\nBo: e1-7"
    assert (other.rank, other.episode_id, other.positions) == (2, "E2", (0, 1, 2))


def test_a_hit_below_the_top_k_does_not_stretch_the_windows_above_it(tmp_path) -> None:
    (only,) = assemble(_fused_rows([("E1", 5, 0.9), ("E1", 6, 0.8), ("E2", 1, 0.7)], 1), 1, 1, tmp_path)
    assert (only.positions, only.matched_positions, only.end) == ((4, 5, 6), (5,), 69.5)


def test_a_hit_bridging_two_windows_merges_all_three(tmp_path) -> None:
    (hit,) = assemble(_fused_rows([("E1", 2, 0.9), ("E1", 8, 0.8), ("E1", 5, 0.7)], 2), 3, 2, tmp_path)
    assert (hit.positions, hit.matched_positions, hit.score, hit.speaker) == (tuple(range(10)), (2, 8, 5), 0.9, "Ann")
    assert [s.position for s in hit.segments] == list(range(10)) and (hit.start, hit.end) == (0.0, 99.5)


def test_windows_merge_when_they_share_a_chunk_not_when_they_only_touch(tmp_path) -> None:
    sharing = assemble(_fused_rows([("E1", 2, 0.9), ("E1", 4, 0.8)], 1), 5, 1, tmp_path)
    assert [h.positions for h in sharing] == [(1, 2, 3, 4, 5)]
    sharing_reversed = assemble(_fused_rows([("E1", 4, 0.9), ("E1", 2, 0.8)], 1), 5, 1, tmp_path)
    assert [h.positions for h in sharing_reversed] == [(1, 2, 3, 4, 5)]
    touching = assemble(_fused_rows([("E1", 2, 0.9), ("E1", 5, 0.8)], 1), 5, 1, tmp_path)
    assert [h.positions for h in touching] == [(1, 2, 3), (4, 5, 6)]
    other_episode = assemble(_fused_rows([("E1", 2, 0.9), ("E2", 2, 0.8)], 1), 5, 1, tmp_path)
    assert [(h.episode_id, h.positions) for h in other_episode] == [("E1", (1, 2, 3)), ("E2", (1, 2, 3))]


@pytest.mark.parametrize(
    ("name", "speaker", "matches"),
    [("priya", "Priya Raman", True), ("Priya Raman", "priya raman", True), (" priya ", "Priya Raman", True),
     ("pri", "Priya Raman", False), ("raman", "Priya Raman", False), ("priya raman", "Priya", False)],
)
def test_speaker_filter_matches_the_whole_name_or_leading_whole_words(name, speaker, matches) -> None:
    assert speaker_matches(name, speaker) is matches


def test_hits_tied_on_score_stay_separate_results(tmp_path) -> None:
    """Hybrid scores tie often (a rank-1 vector-only hit and a rank-1 text-only hit both score 1/61)."""
    hits = assemble(_fused_rows([("E1", 2, 1 / 61), ("E1", 7, 1 / 61)], 0), 5, 0, tmp_path)
    assert [(h.rank, h.position, h.text) for h in hits] == [(1, 2, "e1-2"), (2, 7, "e1-7")]


# --- a question's match credited to its reply (search/replies.py, assembly.py, relevance.py) ---


def _ranked(hits: list[Hit]) -> list[tuple]:
    return [(h.rank, h.episode_id, h.position, h.score, h.speaker, h.text, h.reply_to) for h in hits]


def test_a_questions_reply_ranks_just_above_it_with_the_questions_score_and_credit(tmp_path) -> None:
    hits = assemble(_fused_rows([("E1", 4, 0.9), ("E2", 1, 0.8)], 0, frozenset({("E1", 4)})), 5, 0, tmp_path)
    asked = Credit(4, pytest.approx(0.4), pytest.approx(0.09))  # the question's cosine and ts_rank_cd
    assert _ranked(hits) == [(1, "E1", 5, 0.9, "Bo", "e1-5", asked), (2, "E1", 4, 0.9, "Ann", "e1-4?", None),
                             (3, "E2", 1, 0.8, "Bo", "e2-1", None)]
    reply = hits[0]
    # Not a candidate itself: no scores of its own; the episode's title and link, at the reply's own time.
    assert (reply.vector_score, reply.vector_rank, reply.text_score, reply.text_rank) == (None, None, None, None)
    assert (reply.title, reply.published, reply.link, reply.start, reply.end, reply.positions) == (
        "First", date(2024, 5, 1), "https://x/e1.mp3#t=50", 50.0, 59.5, (5,))
    assert [h.position for h in assemble(_fused_rows([("E1", 4, 0.9)], 0, frozenset({("E1", 4)})), 1, 0,
                                         tmp_path)] == [5]  # the reply takes the only place


def test_a_reply_ranked_below_its_question_moves_above_it_and_keeps_its_own_scores(tmp_path) -> None:
    hits = assemble(_fused_rows([("E1", 4, 0.9), ("E1", 5, 0.6)], 0, frozenset({("E1", 4)})), 5, 0, tmp_path)
    assert _ranked(hits) == [(1, "E1", 5, 0.9, "Bo", "e1-5", Credit(4, pytest.approx(0.4), pytest.approx(0.09))),
                             (2, "E1", 4, 0.9, "Ann", "e1-4?", None)]
    reply = hits[0]
    assert (reply.vector_score, reply.vector_rank, reply.text_score, reply.text_rank) == (
        pytest.approx(0.1), 2, pytest.approx(0.06), 3)
    # A reply already ranked above its question keeps its place and score, uncredited.
    above = assemble(_fused_rows([("E1", 5, 0.95), ("E1", 4, 0.9)], 0, frozenset({("E1", 4)})), 5, 0, tmp_path)
    assert _ranked(above) == [(1, "E1", 5, 0.95, "Bo", "e1-5", None), (2, "E1", 4, 0.9, "Ann", "e1-4?", None)]


def test_a_credited_reply_and_its_question_merge_into_one_result_citing_the_reply(tmp_path) -> None:
    rows = _fused_rows([("E1", 4, 0.9), ("E2", 1, 0.8)], 1, frozenset({("E1", 4)}))
    merged, other = assemble(rows, 2, 1, tmp_path)
    assert (merged.rank, merged.position, merged.score, merged.speaker, merged.reply_to) == (
        1, 5, 0.9, "Bo", Credit(4, pytest.approx(0.4), pytest.approx(0.09)))
    # The reply's window runs to the chunk after the question's window: the statement fetched it.
    assert (merged.positions, merged.matched_positions, merged.link, merged.end) == (
        (3, 4, 5, 6), (5, 4), "https://x/e1.mp3#t=50", 69.5)
    assert merged.text == "Bo: e1-3\nAnn: e1-4?\nBo: e1-5\nAnn: e1-6"
    assert (other.rank, other.episode_id, other.positions, other.reply_to) == (2, "E2", (0, 1, 2), None)


def test_a_reply_by_a_speaker_the_search_filters_out_is_not_credited(tmp_path) -> None:
    rows = _fused_rows([("E1", 4, 0.9)], 0, frozenset({("E1", 4)}))
    assert _ranked(assemble(rows, 5, 0, tmp_path, speaker="ann")) == [(1, "E1", 4, 0.9, "Ann", "e1-4?", None)]


@pytest.mark.parametrize(
    ("text", "question"),
    [("Who led the group at Bell Labs?  ", True), ("他是谁？", True), ("Because of the Nobel? “Really?”", True),
     ("「本当ですか？」", True), ("(really?) ", True),
     ("Shockley did.", False), ("Why? Because.", False)],
)
def test_a_question_ends_with_a_question_mark_before_closing_quotes_and_spaces(text, question) -> None:
    assert is_question(text) is question


def reply_order(ranked: list[tuple[str, int]], turns: dict[tuple[str, int], tuple[str, str]]) -> list[tuple]:
    def chunk(episode_id: str, position: int) -> Segment | None:
        turn = turns.get((episode_id, position))
        return None if turn is None else Segment(position, turn[0], 0.0, 1.0, turn[1])

    return [tuple(r) for r in replies_first(ranked, chunk)]


def test_only_another_speakers_statement_after_a_question_is_credited() -> None:
    turns = {("a", 0): ("Host", "Who led the group?"), ("a", 1): ("Guest", "Shockley did."),
             ("a", 2): ("Host", "Was he hard to work for?"), ("a", 3): ("Host", "I've read he was."),
             ("a", 4): ("Guest", "Why do you ask?"), ("a", 5): ("Host", "Because of the Nobel? “Really?”"),
             ("a", 6): ("Guest", "Yes."), ("a", 7): ("Host", "Last question?")}
    assert reply_order([("a", 0)], turns) == [("a", 1, 0), ("a", 0, None)]
    assert reply_order([("a", 2)], turns) == [("a", 2, None)]  # the same speaker goes on: no reply
    assert reply_order([("a", 4)], turns) == [("a", 4, None)]  # answered by a question (closing quote too)
    assert reply_order([("a", 7)], turns) == [("a", 7, None)]  # nothing after the last chunk
    assert reply_order([("a", 1), ("a", 0)], turns) == [("a", 1, None), ("a", 0, None)]  # already above it
    assert reply_order([("a", 0), ("b", 1), ("a", 1)], turns) == [("a", 1, 0), ("a", 0, None), ("b", 1, None)]
