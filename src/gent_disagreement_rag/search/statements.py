"""The search as one SQL statement: vector candidates (HNSW or exact), text candidates (GIN), fusion,
the top hits, their neighbouring chunks and the chunk after each."""

from __future__ import annotations

import functools
from datetime import date
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import ExecStatus
from psycopg.rows import BaseRowFactory, RowMaker, no_result

from ..storage.vector_index import IndexKind, distance_sql
from .types import Filters, FilterShape, Mode, StoredModel

if TYPE_CHECKING:
    from psycopg.cursor import BaseCursor

RRF_K = 60  # reciprocal rank fusion constant (Cormack et al. 2009)
CANDIDATES = 50  # rows each side of a hybrid search contributes to the fusion
# Candidate list of the HNSW scan (pgvector's default is 40): the smallest that kept recall@10 >= 0.98 in
# every index build measured (BENCHMARKS.md "Design figures").
HNSW_EF_SEARCH = 100
# Iterative-scan budget under a filter (pgvector's default is 20,000). A filter so selective that
# this many tuples yield fewer than k rows is served by an exact scan instead (see _run); scanning
# 20,000 graph tuples costs far more than that.
HNSW_MAX_SCAN_TUPLES = 5_000
# What a tuple visited by the filtered graph walk (graph step + the filter's lookup) costs against a row of
# the exact scan (index fetch + distance), as measured (BENCHMARKS.md "Design figures").
GRAPH_ROW_COST = 2.5
MAX_FETCH = 200  # cap on hits fetched to fill k results after merging context windows


# The speaker rule of speaker_matches, as an = and a prefix LIKE: both can use segments_speaker_idx.
SPEAKER_SQL = "(lower(s.speaker) = %(speaker)s OR lower(s.speaker) LIKE %(speaker_prefix)s)"


def _vector_cte(model: StoredModel, filters: FilterShape, *, exact: bool) -> sql.Composable:
    """Top candidates by cosine distance. The index form orders by the index's own distance expression
    (vector_index.distance_sql) with the model id inlined, exactly as the partial HNSW index is defined, and
    tests the filters per row as the graph walk goes (the iterative scan going on until enough rows pass). The
    exact form (`+ 0` hides the index) ranks every chunk passing the filters, fetched by their own indexes:
    chosen up front for a selective speaker (see exact_is_cheaper), and the rerun when a graph walk came back
    short."""
    # The walk orders by the index's own expression; the distance it reports is in full precision (the same
    # expression when the index is over `vector`).
    walk = sql.SQL(distance_sql(model.index_kind, model.dimensions))
    distance = sql.SQL(distance_sql(IndexKind.VECTOR, model.dimensions))
    # Inlined, not a parameter: the planner matches the partial index's predicate against constants
    # only. (The statement is cached as text with %(name)s placeholders, hence the doubled %.)
    model_literal = sql.Literal(model.model_id).as_string(None).replace("%", "%%")
    where = [sql.SQL("e.model_id = " + model_literal), *_filter_conditions(filters, "e")]
    joins: list[sql.Composable] = []
    if filters.speaker:
        joins.append(sql.SQL("JOIN segments s ON s.episode_id = e.episode_id AND s.position = e.position"))
    order = sql.SQL("({}) + 0").format(distance) if exact else walk
    return sql.SQL(
        "vec AS MATERIALIZED (SELECT e.episode_id, e.position, {distance} AS distance FROM embeddings e {joins} "
        "WHERE {where} ORDER BY {order} LIMIT %(cand)s),\n"
        "vr AS (SELECT episode_id, position, 1 - distance AS vscore, "
        "row_number() OVER (ORDER BY distance, episode_id, position) AS vrank FROM vec)"
    ).format(distance=distance, joins=sql.SQL(" ").join(joins), where=sql.SQL(" AND ").join(where), order=order)


def _filter_conditions(filters: FilterShape, table: str) -> list[sql.Composable]:
    """The filters as SQL conditions: episode and date on `table`'s episode_id (`e` for the vector side,
    `s` for the text side and the speaker estimate), the speaker on `segments s`."""
    where: list[sql.Composable] = []
    if filters.episode:
        where.append(sql.SQL(table + ".episode_id = %(episode)s"))
    dates = [c for c, on in (("x.published >= %(since)s", filters.since), ("x.published <= %(until)s", filters.until)) if on]
    if dates:
        where.append(sql.SQL(
            table + ".episode_id = ANY(ARRAY(SELECT x.episode_id FROM episodes x WHERE " + " AND ".join(dates) + "))"
        ))
    if filters.speaker:
        where.append(sql.SQL(SPEAKER_SQL))
    return where


def _text_cte(filters: FilterShape, *, websearch: bool) -> sql.Composable:
    where = [sql.SQL("s.tsv @@ tq.q"), *_filter_conditions(filters, "s")]
    tsq = "websearch_to_tsquery('english', %(q)s)" if websearch else "%(tsq)s::tsquery"
    return sql.SQL(
        "tq AS (SELECT " + tsq + " AS q),\n"
        "txt AS MATERIALIZED (SELECT s.episode_id, s.position, ts_rank_cd(s.tsv, tq.q) AS tscore "
        "FROM segments s CROSS JOIN tq WHERE {where} ORDER BY tscore DESC, s.episode_id, s.position LIMIT %(cand)s),\n"
        # Chunks with the same ts_rank_cd share the mean of the ranks they span: ts_rank_cd scores every chunk that
        # holds one query word once alike, whichever word, and ranking such ties by episode id and position gave
        # the catalogue's first one-line mention a lead the fusion could not undo (README's transistor question).
        "tr AS (SELECT episode_id, position, tscore, "
        "rank() OVER (ORDER BY tscore DESC) + (count(*) OVER (PARTITION BY tscore) - 1) / 2.0 AS trank FROM txt)"
    ).format(where=sql.SQL(" AND ").join(where))


@functools.lru_cache(maxsize=16)
def estimate_sql(filters: FilterShape) -> str:
    """The planner's estimate of the chunks passing the filters (EXPLAIN plans, reads no rows)."""
    return sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM segments s WHERE {}").format(
        sql.SQL(" AND ").join(_filter_conditions(filters, "s"))).as_string(None)


CHUNKS_SQL = "SELECT greatest(reltuples, 0)::float8 FROM pg_class WHERE oid = 'segments'::regclass"


def exact_is_cheaper(rows: float, candidates: int, chunks: float) -> bool:
    """Whether ranking all `rows` chunks that pass a filter beats walking the HNSW graph until
    `candidates` of them turn up. The walk visits ~candidates * chunks / rows tuples and each costs
    ~GRAPH_ROW_COST rows of the exact scan, so exact wins while rows² <= GRAPH_ROW_COST * candidates
    * chunks: at 100k chunks up to ~1,600 rows for 10 candidates (vector mode), ~3,500 for 50 (hybrid)."""
    return rows * rows <= GRAPH_ROW_COST * candidates * chunks


def build_sql(mode: Mode, model: StoredModel | None, filters: Filters, *, websearch: bool = False,
              exact: bool = False) -> str:
    """The whole search as one statement: candidates, fusion, top %(fetch)s hits, their windows and the chunk after
    each window (a question's reply, see replies.py)."""
    return _build_sql(mode, model, filters.shape, websearch, exact)


@functools.lru_cache(maxsize=256)
def _build_sql(mode: Mode, model: StoredModel | None, filters: FilterShape, websearch: bool, exact: bool) -> str:
    ctes: list[sql.Composable] = []
    if mode in (Mode.vector, Mode.hybrid):
        assert model is not None
        ctes.append(_vector_cte(model, filters, exact=exact))
    if mode in (Mode.text, Mode.hybrid):
        ctes.append(_text_cte(filters, websearch=websearch))
    if mode is Mode.vector:
        fused = ("SELECT episode_id, position, vscore AS score, vscore, vrank, "
                 "NULL::real AS tscore, NULL::bigint AS trank FROM vr")
    elif mode is Mode.text:
        fused = ("SELECT episode_id, position, tscore AS score, NULL::float8 AS vscore, NULL::bigint AS vrank, "
                 "tscore, trank FROM tr")
    else:
        fused = (
            "SELECT episode_id, position, "
            "coalesce(1.0 / (%(rrf_k)s + vrank), 0) + coalesce(1.0 / (%(rrf_k)s + trank), 0) AS score, "
            "vscore, vrank, tscore, trank FROM vr FULL JOIN tr USING (episode_id, position)"
        )
    ctes.append(sql.SQL(
        "hits AS (" + fused + " ORDER BY score DESC, vscore DESC NULLS LAST, tscore DESC NULLS LAST, episode_id, position "
        "LIMIT %(fetch)s)"
    ))
    vec_count = "(SELECT count(*) FROM vec)" if mode is not Mode.text else "NULL::bigint"
    vscore = "h.vscore"
    if mode is Mode.hybrid:
        # A hit only the text side found still gets its cosine similarity (one primary-key lookup), because
        # relevance is read from it (see relevance.py).
        assert model is not None
        model_literal = sql.Literal(model.model_id).as_string(None).replace("%", "%%")
        vscore = (f"coalesce(h.vscore, (SELECT 1 - ({distance_sql(IndexKind.VECTOR, model.dimensions)}) "
                  f"FROM embeddings e WHERE e.model_id = {model_literal} "
                  "AND e.episode_id = h.episode_id AND e.position = h.position))")
    return sql.SQL(
        "WITH {ctes}\n"
        "SELECT h.episode_id, h.position, h.score::float8 AS score, {vscore}::float8 AS vscore, h.vrank::int AS vrank, "
        "h.tscore::float8 AS tscore, h.trank::int AS trank, ep.title, ep.published, ep.file_name, ep.audio_url, "
        "s.position AS chunk_position, s.speaker, s.start_seconds, s.end_seconds, s.text, s.chapter, "
        + vec_count + " AS vector_candidates\n"
        "FROM hits h JOIN episodes ep ON ep.episode_id = h.episode_id "
        "JOIN segments s ON s.episode_id = h.episode_id "
        "AND s.position BETWEEN h.position - %(ctx)s AND h.position + %(ctx)s + 1\n"
        "ORDER BY h.score DESC, h.vscore DESC NULLS LAST, h.tscore DESC NULLS LAST, h.episode_id, h.position, s.position"
    ).format(ctes=sql.SQL(",\n").join(ctes), vscore=sql.SQL(vscore)).as_string(None)


_Row = TypeVar("_Row")
TUPLES_OK = ExecStatus.TUPLES_OK


class SearchRow(NamedTuple):
    """A row of build_sql's statement: a hit (its scores and episode), and one chunk of its window (or the chunk
    after it). Its fields are the statement's columns, by name and in order (search_row checks both)."""

    episode_id: str
    position: int  # the hit's chunk
    score: float  # the mode's ranking value (see engine's module docstring)
    vscore: float | None  # cosine similarity of the hit's chunk (vector/hybrid)
    vrank: int | None  # its rank on the vector side (None: not a vector candidate)
    tscore: float | None  # ts_rank_cd (text/hybrid)
    trank: int | None
    title: str | None
    published: date | None
    file_name: str | None
    audio_url: str | None
    chunk_position: int  # this row's chunk: in the hit's window, or the one after it
    speaker: str
    start_seconds: float
    end_seconds: float
    text: str
    chapter: str | None
    vector_candidates: int | None  # rows the vector side found (None in text mode): short means a starved walk


def named_rows(cls: type[_Row]) -> BaseRowFactory[_Row]:
    """A row factory for a NamedTuple whose fields are the statement's columns in the same order: the names are
    checked once per result, then each row is built from its values (class_row's keyword call per row would cost
    about as much as assembling the hits of a search with context windows, which reads hundreds of rows)."""
    fields = list(cls._fields)  # type: ignore[attr-defined]

    def factory(cursor: BaseCursor[Any, Any]) -> RowMaker[_Row]:
        result = cursor.pgresult
        if result is None or result.status != TUPLES_OK:
            return no_result
        # From the result's field names (cursor.description would build a Column per field for each result).
        names = [result.fname(i).decode() for i in range(result.nfields)]  # type: ignore[union-attr]
        if names != fields:
            raise psycopg.ProgrammingError(f"the statement's columns {names} are not {cls.__name__}'s fields {fields}")
        # The names matched, so the count did: the values go straight in (NamedTuple._make checks the length again).
        return functools.partial(tuple.__new__, cls)  # type: ignore[type-var]

    return factory


search_row = named_rows(SearchRow)


def scan_settings(conn: psycopg.Connection) -> None:
    """Transaction-local HNSW knobs (call inside a transaction)."""
    knobs = {"hnsw.ef_search": str(HNSW_EF_SEARCH), "hnsw.iterative_scan": "relaxed_order",
             "hnsw.max_scan_tuples": str(HNSW_MAX_SCAN_TUPLES)}
    conn.execute(
        sql.SQL("SELECT {}").format(sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value)) for name, value in knobs.items()
        ))
    )
