"""The text side's query: which of a question's words to search for, from the planner's statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .statements import named_rows

TEXT_ROW_BUDGET = 1_000  # estimated rows the text side may rank (see plan_text_query)


def uses_websearch_syntax(query: str) -> bool:
    """Quotes, OR or -word: the user wrote a websearch query, which is then taken as is."""
    words = query.lower().split()
    return '"' in query or "or" in words or any(w.startswith("-") and len(w) > 1 for w in words)


def _tsquery_literal(lexemes: Sequence[str], operator: str) -> str:
    return f" {operator} ".join("'" + x.replace("\\", "\\\\").replace("'", "''") + "'" for x in lexemes)


class LexemeStats(NamedTuple):
    """A row of TEXT_STATS_SQL: one lexeme of the query and the planner's statistics of `segments.tsv`."""

    lexeme: str
    frequency: float | None  # the share of chunks holding it, when it is among the most common elements
    min_frequency: float | None  # the least common element's share (an upper bound for the others); None: no stats
    chunks: float | None  # the planner's row count of segments


TEXT_STATS_SQL = """SELECT l.lexeme, st.freqs[array_position(st.elems, l.lexeme)] AS frequency,
       st.freqs[cardinality(st.elems) + 1] AS min_frequency,
       (SELECT reltuples FROM pg_class WHERE oid = 'segments'::regclass) AS chunks
    FROM unnest(tsvector_to_array(to_tsvector('english', %s))) AS l(lexeme)
    LEFT JOIN (SELECT most_common_elems::text::text[] AS elems, most_common_elem_freqs AS freqs FROM pg_stats
               WHERE schemaname = current_schema() AND tablename = 'segments' AND attname = 'tsv') st ON true"""
lexeme_stats = named_rows(LexemeStats)


def plan_text_query(rows: Sequence[LexemeStats]) -> str | None:
    """The text side's tsquery (as tsquery text) for a plain-words query, from TEXT_STATS_SQL's rows (one per
    lexeme of the query), or None for no lexemes.

    websearch_to_tsquery alone ANDs every term, which almost no chunk matches for a natural
    question, so the terms are ORed and ranked by ts_rank_cd instead. Ranking reads every matching
    row, so common lexemes (by the planner's statistics of `segments.tsv`) are left out, most
    common first, while the estimated matching rows exceed TEXT_ROW_BUDGET; if even the rarest
    lexeme is over it, the terms are ANDed, less those found in more than half of the chunks (BM25
    weighs such a term below zero: it narrows the match by little, drops the chunks that lack it, and
    its posting list is the longest to read). Without statistics (a never-analysed table) all are kept.
    """
    if not rows:
        return None
    lexemes = [r.lexeme for r in rows]
    reltuples = rows[0].chunks or 0
    if reltuples <= 0 or rows[0].min_frequency is None:  # no statistics yet
        return _tsquery_literal(lexemes, "|")
    floor = rows[0].min_frequency  # every row carries the column's statistics
    estimate = {r.lexeme: (r.frequency if r.frequency is not None else floor) * reltuples for r in rows}
    kept, total = [], 0.0
    for lex in sorted(lexemes, key=lambda x: estimate[x]):
        if total + estimate[lex] > TEXT_ROW_BUDGET:
            break
        kept.append(lex)
        total += estimate[lex]
    if kept:
        return _tsquery_literal(kept, "|")
    return _tsquery_literal([lex for lex in lexemes if estimate[lex] <= reltuples / 2] or lexemes, "&")
