"""Search the stored chunks: HNSW cosine search, Postgres full-text search, or both fused (RRF).

One SQL statement does the search: the vector side is an HNSW scan of the model's partial index,
the text side a GIN search of `segments.tsv` ranked by ts_rank_cd, each taking its top
`CANDIDATES` with the filters applied inside the query; hybrid mode fuses the two rankings with
reciprocal rank fusion (score = sum of 1 / (60 + rank)) in SQL, and the same statement fetches the
neighbouring chunks asked for with `context`. A search is three round trips on one pooled
connection: the pool's connection check, the lookups (episode, stored models, lexeme statistics;
pipelined), and the statement with its transaction-local HNSW settings (pipelined with the commit).
At 100k chunks (bench/search_latency.py, 2 shared cores at load ~2) the call takes ~13 ms (vector) /
~17 ms (hybrid) at the median, of which the query embedding is 3-5 ms (local MiniLM on int8 kernels,
see embedders/local_minilm.py); Postgres plans the statement in ~1 ms and runs the HNSW scan in
~1.5-4 ms, and the text side of hybrid adds ~2-4 ms (GIN lookups, ranking every matching row).

Filters are applied inside the HNSW scan, with pgvector 0.8's iterative scan
(`hnsw.iterative_scan = relaxed_order`, up to `hnsw.max_scan_tuples`) so a selective filter keeps
scanning the graph instead of returning fewer than k rows. If the scan still comes back short (a
filter matching a tiny fraction of a large table), the vector side is rerun as an exact scan. A
speaker filter selective enough that ranking all of the speaker's chunks costs less than the graph
walk (by the planner's estimate, see exact_is_cheaper) is served by the exact scan from the start:
a guest with 1% of 100k chunks takes ~15-20 ms that way, 35-130 ms through the graph.

Filters:
- `episode`: the episode id (an unknown id is an error);
- `speaker`: case-insensitive; matches a speaker whose full name equals it ("priya raman") or whose
  name starts with it as whole words ("priya" matches "Priya Raman", "pri" does not);
- `since`: the episode's `published` date is on or after it (episodes without a date are excluded).

Scores: vector mode = cosine similarity of the best chunk; text mode = ts_rank_cd; hybrid = RRF.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import psycopg
from psycopg import sql

from .database import Database
from .embedders import Embedder
from .errors import GdrError
from .settings import DEFAULT_LOCAL_MODEL, DEFAULT_OPENAI_MODEL, Settings


class SearchError(GdrError):
    """The search cannot run: empty query, unknown episode, nothing ingested, model unavailable."""


class Mode(str, Enum):
    vector = "vector"
    text = "text"
    hybrid = "hybrid"


# The default mode was chosen by measurement: the 12 questions of tests/search_questions.json over
# the 4 sample episodes, local all-MiniLM-L6-v2 vectors; a hit = right episode, time range
# overlapping the expected turn. (text = OR of the query's lexemes ranked by ts_rank_cd, see
# text_query; hybrid = RRF of both, ties to the closer vector.)
#                                        vector          text            hybrid      (hit@3 of 12, MRR)
#   script turns, one chunk per turn     12  .861        12  .875        12  .958
#   local Whisper + diarizer transcript, real chunker:
#     CHUNK_MAX_TOKENS=250 (default)     11  .889        11  .896        12 1.000
#     CHUNK_MAX_TOKENS=80                12  .903        11  .896        12 1.000
#     CHUNK_MAX_TOKENS=40                12  .833        11  .722        12  .944
# (samples as of 2026-11-28 11:12. An earlier version of them gave, on script turns, 10 .723 /
# 10 .729 / 10 .736: there a question turn outranked its answer turn in every mode.)
# Hybrid is never behind on hit@3 and has the best MRR in every setting, and it keeps the
# rare names and terms that vectors blur (tests/test_search.py: a term only text search finds).
# At 100k chunks it costs ~4 ms more than vector alone (the statistics lookup, and the text side's GIN
# lookups and ranking of every matching row, <= TEXT_ROW_BUDGET by estimate).
DEFAULT_MODE = Mode.hybrid

RRF_K = 60  # reciprocal rank fusion constant (Cormack et al. 2009)
CANDIDATES = 50  # rows each side of a hybrid search contributes to the fusion
# Candidate list of the HNSW scan (pgvector's default is 40). Recall@10 at 100k chunks varies from one
# index build to the next (bench/search_latency.py's data, 5 builds): 0.974-0.992 at 40, 0.976-0.994 at
# 60, 0.988-0.997 at 100. 60 would save ~1.7 ms a search, but only 100 kept >= 0.98 in every build.
HNSW_EF_SEARCH = 100
# Iterative-scan budget under a filter (pgvector's default is 20,000). A filter so selective that
# this many tuples yield fewer than k rows is served by an exact scan instead (see _run); scanning
# 20,000 graph tuples costs far more than that.
HNSW_MAX_SCAN_TUPLES = 5_000
# A tuple visited by the filtered graph walk (graph step + the filter's lookup) against a row of the exact
# scan (index fetch + distance), measured at 100k chunks: ~33 us against ~13 us.
GRAPH_ROW_COST = 2.5
MAX_FETCH = 200  # cap on hits fetched to fill k results after merging context windows
TEXT_ROW_BUDGET = 1_000  # estimated rows the text side may rank (see text_query)
# Extra transaction-local planner settings for the search statement. Empty in production; the
# tests set {"enable_seqscan": "off", "enable_sort": "off"} to get the HNSW plan on a 2,000-row
# table, where Postgres rightly prefers an exact sequential scan (it picks HNSW unprompted at 100k).
PLANNER_SETTINGS: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Segment:
    """One stored chunk of a result (the hit itself or a neighbour)."""

    position: int
    speaker: str
    start: float
    end: float
    text: str

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "speaker": self.speaker, "start": self.start, "end": self.end, "text": self.text}


@dataclass(frozen=True, slots=True)
class Hit:
    """One result: a matching chunk, or a window of chunks around one or more matching chunks."""

    rank: int  # 1-based
    score: float  # see the module docstring: cosine similarity, ts_rank_cd or RRF, by mode
    episode_id: str
    title: str
    published: date | None
    speaker: str  # speaker of the best matching chunk
    start: float  # seconds, start of the result (the window's first chunk)
    end: float  # seconds, end of the result
    text: str  # the chunk's text; for a window, one "Speaker: text" line per chunk
    link: str | None  # audio_url#t=SECONDS, else AUDIO_DIR/file_name#t=SECONDS, at `start`
    position: int  # position of the best matching chunk
    positions: tuple[int, ...]  # every chunk in the result, in order
    matched_positions: tuple[int, ...]  # the matching chunks merged into this result, best first
    segments: tuple[Segment, ...]  # every chunk in the result, in order
    vector_score: float | None = None  # cosine similarity of the best chunk (vector/hybrid)
    vector_rank: int | None = None  # its rank on the vector side (None: not among the candidates)
    text_score: float | None = None  # ts_rank_cd of the best chunk (text/hybrid)
    text_rank: int | None = None

    @property
    def speakers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.speaker for s in self.segments))

    @property
    def time_range(self) -> str:
        return f"{format_time(self.start)}–{format_time(self.end)}"

    def as_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "score": self.score,
            "episode_id": self.episode_id,
            "title": self.title,
            "published": self.published.isoformat() if self.published else None,
            "speaker": self.speaker,
            "speakers": list(self.speakers),
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "link": self.link,
            "position": self.position,
            "positions": list(self.positions),
            "matched_positions": list(self.matched_positions),
            "vector_score": self.vector_score,
            "vector_rank": self.vector_rank,
            "text_score": self.text_score,
            "text_rank": self.text_rank,
            "segments": [s.as_json() for s in self.segments],
        }


class SearchResults(list[Hit]):
    """The hits, plus how they were found and, when empty, why (`notice`)."""

    def __init__(self, hits: Sequence[Hit] = (), *, mode: Mode = DEFAULT_MODE, model_id: str | None = None,
                 notice: str | None = None, exact_fallback: bool = False):
        super().__init__(hits)
        self.mode = mode
        self.model_id = model_id  # the embedding model searched (None in text mode)
        self.notice = notice  # why there are no results, when there are none
        self.exact_fallback = exact_fallback  # True when a filter starved the HNSW scan and an exact scan ran


@dataclass(frozen=True, slots=True)
class StoredModel:
    model_id: str
    provider: str
    model: str
    dimensions: int


class _Shape(NamedTuple):
    episode: bool
    speaker: bool
    since: bool


@dataclass(frozen=True, slots=True)
class _Filters:
    episode: str | None = None
    speaker: str | None = None
    since: date | None = None

    @property
    def any(self) -> bool:
        return self.shape != _Shape(False, False, False)

    @property
    def shape(self) -> _Shape:
        """Which filters are set: all the SQL text depends on (the values are parameters)."""
        return _Shape(self.episode is not None, self.speaker is not None, self.since is not None)

    def params(self) -> dict[str, Any]:
        name = self.speaker.lower() if self.speaker else None
        return {"episode": self.episode, "since": self.since, "speaker": name,
                "speaker_prefix": _like_escape(name) + " %" if name else None}


def format_time(seconds: float) -> str:
    total = max(0, int(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def deep_link(audio_url: str | None, file_name: str | None, audio_dir: Path, seconds: float) -> str | None:
    """A link that plays the episode from `seconds` (media-fragment `#t=`, whole seconds, rounded down)."""
    t = max(0, math.floor(seconds))
    if audio_url:
        return f"{audio_url.split('#', 1)[0]}#t={t}"
    if file_name:
        return f"{audio_dir / file_name}#t={t}"
    return None


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _parse_since(since: date | datetime | str | None) -> date | None:
    if since is None or (isinstance(since, str) and not since.strip()):
        return None
    if isinstance(since, datetime):
        return since.date()
    if isinstance(since, date):
        return since
    try:
        return date.fromisoformat(since.strip())
    except ValueError:
        raise SearchError(f"since={since!r} is not a date (use YYYY-MM-DD)") from None


def _parse_mode(mode: Mode | str) -> Mode:
    try:
        return Mode(mode.value if isinstance(mode, Mode) else str(mode).lower())
    except ValueError:
        raise SearchError(f"unknown search mode {mode!r} (use vector, text or hybrid)") from None


# --- the embedding model ---------------------------------------------------------------------------


def settings_model_id(settings: Settings) -> str:
    """The model id the current settings' embedder produces (without building it)."""
    from .embedders import model_id

    if settings.resolved_embedder == "local":
        return model_id("local", DEFAULT_LOCAL_MODEL, 384)
    from .embedders.openai import NATIVE_DIMENSIONS

    name = settings.embedding_model or DEFAULT_OPENAI_MODEL
    return model_id("openai", name, settings.embedding_dimensions or NATIVE_DIMENSIONS.get(name, 0))


STORED_MODELS_SQL = """SELECT m.model_id, m.provider, m.model, m.dimensions FROM embedding_models m
    WHERE EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = m.model_id) ORDER BY m.model_id"""


def stored_models(conn: psycopg.Connection) -> list[StoredModel]:
    """Registered models that have at least one stored vector."""
    return [StoredModel(*r) for r in conn.execute(STORED_MODELS_SQL).fetchall()]


def choose_model(conn: psycopg.Connection, settings: Settings, requested: str | None = None,
                 models: list[StoredModel] | None = None) -> StoredModel:
    """The model to search with: `requested`, else the only one with vectors, else the one the
    settings' embedder produces, else the one with the most vectors."""
    models = stored_models(conn) if models is None else models
    if not models:
        raise SearchError("the database has no embeddings yet: run `gdr ingest` first")
    if requested:
        for m in models:
            if m.model_id == requested:
                return m
        raise SearchError(
            f"no vectors stored for model {requested!r}; available: {', '.join(m.model_id for m in models)}"
        )
    if len(models) == 1:
        return models[0]
    preferred = settings_model_id(settings)
    for m in models:
        if m.model_id == preferred:
            return m
    counts = dict(conn.execute("SELECT model_id, count(*) FROM embeddings GROUP BY model_id").fetchall())
    return max(models, key=lambda m: (counts.get(m.model_id, 0), m.model_id))


def embedder_for(model: StoredModel, settings: Settings) -> Embedder:
    """An embedder producing vectors comparable with `model`'s, or a SearchError saying what is missing."""
    if model.provider == "local":
        from .embedders.local_minilm import DIMENSIONS

        if model.model != DEFAULT_LOCAL_MODEL or model.dimensions != DIMENSIONS:
            raise SearchError(f"the stored vectors were made with {model.model_id}, which is not available locally")
        return _local_embedder(settings.home)
    if model.provider == "openai":
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        if not key:
            raise SearchError(
                f"the stored vectors were made with {model.model_id}; set OPENAI_API_KEY to embed the query "
                "with the same model, or re-ingest with EMBEDDER=local (or search with --mode text)"
            )
        return _openai_embedder(key, settings.openai_base_url, model.model, model.dimensions)
    raise SearchError(f"the stored vectors were made with {model.model_id}, which this version cannot embed queries for")


@functools.cache
def _local_embedder(home: Path) -> Embedder:
    """The query embedder for local vectors: MiniLM on int8 kernels, 2-3x faster than the stored
    vectors' model on one query (see embedders/local_minilm.py)."""
    from .embedders.local_minilm import LocalMiniLMQueryEmbedder

    return LocalMiniLMQueryEmbedder(home)


@functools.lru_cache(maxsize=4)
def _openai_embedder(key: str, base_url: str, model: str, dimensions: int) -> Embedder:
    from .embedders.openai import OpenAIEmbedder

    return OpenAIEmbedder(key, base_url=base_url, model=model, dimensions=dimensions)


def embed_query(embedder: Embedder, query: str, dimensions: int) -> np.ndarray:
    vector = embedder.embed([query]).vectors[0]
    if vector.shape != (dimensions,):
        raise SearchError(f"the query embedding has {vector.shape[0]} dimensions, the stored vectors {dimensions}")
    return vector


# --- SQL -------------------------------------------------------------------------------------------


def uses_websearch_syntax(query: str) -> bool:
    """Quotes, OR or -word: the user wrote a websearch query, which is then taken as is."""
    words = query.lower().split()
    return '"' in query or "or" in words or any(w.startswith("-") and len(w) > 1 for w in words)


def _tsquery_literal(lexemes: Sequence[str], operator: str) -> str:
    return f" {operator} ".join("'" + x.replace("\\", "\\\\").replace("'", "''") + "'" for x in lexemes)


TEXT_STATS_SQL = """SELECT l.lexeme, st.freqs[array_position(st.elems, l.lexeme)], st.freqs[cardinality(st.elems) + 1],
       (SELECT reltuples FROM pg_class WHERE oid = 'segments'::regclass)
    FROM unnest(tsvector_to_array(to_tsvector('english', %s))) AS l(lexeme)
    LEFT JOIN (SELECT most_common_elems::text::text[] AS elems, most_common_elem_freqs AS freqs FROM pg_stats
               WHERE schemaname = current_schema() AND tablename = 'segments' AND attname = 'tsv') st ON true"""


def text_query(conn: psycopg.Connection, query: str) -> str | None:
    """The text side's tsquery (as tsquery text) for a plain-words query, or None for no lexemes.

    websearch_to_tsquery alone ANDs every term, which almost no chunk matches for a natural
    question, so the terms are ORed and ranked by ts_rank_cd instead. Ranking reads every matching
    row, so common lexemes (by the planner's statistics of `segments.tsv`) are left out, most
    common first, while the estimated matching rows exceed TEXT_ROW_BUDGET; if even the rarest
    lexeme is over it, the terms are ANDed, less those found in more than half of the chunks (BM25
    weighs such a term below zero: it narrows the match by little, drops the chunks that lack it, and
    its posting list is the longest to read). Without statistics (a never-analysed table) all are kept.
    """
    return _text_query(conn.execute(TEXT_STATS_SQL, (query,)).fetchall())


def _text_query(rows: list[tuple]) -> str | None:
    if not rows:
        return None
    lexemes = [r[0] for r in rows]
    reltuples = rows[0][3] or 0
    if reltuples <= 0 or rows[0][2] is None:  # no statistics yet
        return _tsquery_literal(lexemes, "|")
    estimate = {lex: (freq if freq is not None else min_freq) * reltuples for lex, freq, min_freq, _ in rows}
    kept, total = [], 0.0
    for lex in sorted(lexemes, key=lambda x: estimate[x]):
        if total + estimate[lex] > TEXT_ROW_BUDGET:
            break
        kept.append(lex)
        total += estimate[lex]
    if kept:
        return _tsquery_literal(kept, "|")
    return _tsquery_literal([lex for lex in lexemes if estimate[lex] <= reltuples / 2] or lexemes, "&")


# The speaker rule of speaker_matches, as an = and a prefix LIKE: both can use segments_speaker_idx.
SPEAKER_SQL = "(lower(s.speaker) = %(speaker)s OR lower(s.speaker) LIKE %(speaker_prefix)s)"


def _vector_cte(model: StoredModel, filters: _Shape, *, exact: bool) -> sql.Composable:
    """Top candidates by cosine distance. The index form keeps `embedding::vector(D) <=> q` with the
    model id inlined, exactly as the partial HNSW index is defined, and tests the filters per row as the
    graph walk goes (the iterative scan going on until enough rows pass). The exact form (`+ 0` hides
    the index) ranks every chunk passing the filters, fetched by their own indexes: chosen up front for
    a selective speaker (see exact_is_cheaper), and the rerun when a graph walk came back short."""
    dims = sql.Literal(model.dimensions)
    distance = sql.SQL("e.embedding::vector({d}) <=> %(qv)s::vector({d})").format(d=dims)
    # Inlined, not a parameter: the planner matches the partial index's predicate against constants
    # only. (The statement is cached as text with %(name)s placeholders, hence the doubled %.)
    model_literal = sql.Literal(model.model_id).as_string(None).replace("%", "%%")
    where = [sql.SQL("e.model_id = " + model_literal), *_filter_conditions(filters, "e")]
    joins: list[sql.Composable] = []
    if filters.speaker:
        joins.append(sql.SQL("JOIN segments s ON s.episode_id = e.episode_id AND s.position = e.position"))
    order = sql.SQL("({}) + 0").format(distance) if exact else distance
    return sql.SQL(
        "vec AS MATERIALIZED (SELECT e.episode_id, e.position, {distance} AS distance FROM embeddings e {joins} "
        "WHERE {where} ORDER BY {order} LIMIT %(cand)s),\n"
        "vr AS (SELECT episode_id, position, 1 - distance AS vscore, "
        "row_number() OVER (ORDER BY distance, episode_id, position) AS vrank FROM vec)"
    ).format(distance=distance, joins=sql.SQL(" ").join(joins), where=sql.SQL(" AND ").join(where), order=order)


def _filter_conditions(filters: _Shape, table: str) -> list[sql.Composable]:
    """The filters as SQL conditions: episode and date on `table`'s episode_id (`e` for the vector side,
    `s` for the text side and the speaker estimate), the speaker on `segments s`."""
    where = []
    if filters.episode:
        where.append(sql.SQL(table + ".episode_id = %(episode)s"))
    if filters.since:
        where.append(sql.SQL(
            table + ".episode_id = ANY(ARRAY(SELECT x.episode_id FROM episodes x WHERE x.published >= %(since)s))"
        ))
    if filters.speaker:
        where.append(sql.SQL(SPEAKER_SQL))
    return where


def _text_cte(filters: _Shape, *, websearch: bool) -> sql.Composable:
    where = [sql.SQL("s.tsv @@ tq.q"), *_filter_conditions(filters, "s")]
    tsq = "websearch_to_tsquery('english', %(q)s)" if websearch else "%(tsq)s::tsquery"
    return sql.SQL(
        "tq AS (SELECT " + tsq + " AS q),\n"
        "txt AS MATERIALIZED (SELECT s.episode_id, s.position, ts_rank_cd(s.tsv, tq.q) AS tscore "
        "FROM segments s CROSS JOIN tq WHERE {where} ORDER BY tscore DESC, s.episode_id, s.position LIMIT %(cand)s),\n"
        "tr AS (SELECT episode_id, position, tscore, "
        "row_number() OVER (ORDER BY tscore DESC, episode_id, position) AS trank FROM txt)"
    ).format(where=sql.SQL(" AND ").join(where))


@functools.lru_cache(maxsize=16)
def _estimate_sql(filters: _Shape) -> str:
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


def build_sql(mode: Mode, model: StoredModel | None, filters: _Filters, *, websearch: bool = False,
              exact: bool = False) -> str:
    """The whole search as one statement: candidates, fusion, top %(fetch)s hits, their windows."""
    return _build_sql(mode, model, filters.shape, websearch, exact)


@functools.lru_cache(maxsize=256)
def _build_sql(mode: Mode, model: StoredModel | None, filters: _Shape, websearch: bool, exact: bool) -> str:
    ctes: list[sql.Composable] = []
    if mode in (Mode.vector, Mode.hybrid):
        assert model is not None
        ctes.append(_vector_cte(model, filters, exact=exact))
    if mode in (Mode.text, Mode.hybrid):
        ctes.append(_text_cte(filters, websearch=websearch))
    if mode is Mode.vector:
        fused = "SELECT episode_id, position, vscore AS score, vscore, vrank, NULL::real AS tscore, NULL::bigint AS trank FROM vr"
    elif mode is Mode.text:
        fused = "SELECT episode_id, position, tscore AS score, NULL::float8 AS vscore, NULL::bigint AS vrank, tscore, trank FROM tr"
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
    return sql.SQL(
        "WITH {ctes}\n"
        "SELECT h.episode_id, h.position, h.score::float8, h.vscore::float8, h.vrank::int, h.tscore::float8, h.trank::int, "
        "ep.title, ep.published, ep.file_name, ep.audio_url, "
        "s.position, s.speaker, s.start_seconds, s.end_seconds, s.text, " + vec_count + "\n"
        "FROM hits h JOIN episodes ep ON ep.episode_id = h.episode_id "
        "JOIN segments s ON s.episode_id = h.episode_id AND s.position BETWEEN h.position - %(ctx)s AND h.position + %(ctx)s\n"
        "ORDER BY h.score DESC, h.vscore DESC NULLS LAST, h.tscore DESC NULLS LAST, h.episode_id, h.position, s.position"
    ).format(ctes=sql.SQL(",\n").join(ctes)).as_string(None)


def _scan_settings(conn: psycopg.Connection) -> None:
    """Transaction-local HNSW knobs and PLANNER_SETTINGS (call inside a transaction)."""
    knobs = {"hnsw.ef_search": str(HNSW_EF_SEARCH), "hnsw.iterative_scan": "relaxed_order",
             "hnsw.max_scan_tuples": str(HNSW_MAX_SCAN_TUPLES), **PLANNER_SETTINGS}
    conn.execute(
        sql.SQL("SELECT {}").format(sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value)) for name, value in knobs.items()
        ))
    )


# --- the search ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    episode_id: str
    lo: int
    hi: int
    best: tuple  # the best hit's row
    matched: list[int]
    segments: dict[int, Segment] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Request:
    """A validated search request."""

    query: str
    k: int
    mode: Mode
    filters: _Filters
    context: int
    model_id: str | None

    @property
    def fetch(self) -> int:
        """Hits to fetch: k, or more when context windows may merge and free slots."""
        return self.k if self.context == 0 else min(MAX_FETCH, self.k * (2 * self.context + 1))

    @property
    def websearch(self) -> bool:
        return uses_websearch_syntax(self.query)


@dataclass(frozen=True, slots=True)
class _Prepared:
    request: _Request
    model: StoredModel | None
    statement: str
    params: dict[str, Any]
    exact: bool  # the vector side ranks every chunk passing the filters (no graph walk, no rerun)


def _validate(query: str, k: int, *, episode: str | None, speaker: str | None, since: date | datetime | str | None,
              mode: Mode | str, context: int, model_id: str | None) -> _Request:
    if not isinstance(query, str) or not query.strip():
        raise SearchError("the search query is empty")
    if k < 1:
        raise SearchError(f"k must be at least 1 (got {k})")
    if context < 0:
        raise SearchError(f"context must be 0 or more chunks (got {context})")
    if speaker is not None and not speaker.strip():
        raise SearchError("the speaker filter is empty")
    filters = _Filters(episode=str(episode) if episode is not None else None,
                       speaker=speaker.strip() if speaker else None, since=_parse_since(since))
    return _Request(query.strip(), k, _parse_mode(mode), filters, context, model_id)


def _prepare(conn: psycopg.Connection, request: _Request, settings: Settings) -> _Prepared:
    """Checks and lookups in one round trip (a pipeline), then the query embedding and the statement."""
    mode, filters = request.mode, request.filters
    needs_text = mode is not Mode.vector and not request.websearch
    # A speaker's share of the chunks varies most (a host: half; a guest: 1%), so with a speaker filter
    # the planner's estimate of the passing chunks chooses between the graph walk and the exact scan.
    estimate = mode is not Mode.text and filters.speaker is not None
    params = filters.params()
    with conn.pipeline():
        episode_cur = None
        if filters.episode is not None:
            episode_cur = conn.execute("SELECT EXISTS (SELECT 1 FROM episodes WHERE episode_id = %s)", (filters.episode,))
        if mode is Mode.text:
            models_cur = conn.execute("SELECT EXISTS (SELECT 1 FROM segments)")
        else:
            models_cur = conn.execute(STORED_MODELS_SQL)
        stats_cur = conn.execute(TEXT_STATS_SQL, (request.query,)) if needs_text else None
        if estimate:
            estimate_cur = conn.execute(_estimate_sql(filters.shape), params, prepare=False)
            chunks_cur = conn.execute(CHUNKS_SQL)
    if episode_cur is not None and not episode_cur.fetchone()[0]:
        known = [r[0] for r in conn.execute("SELECT episode_id FROM episodes ORDER BY episode_id LIMIT 21")]
        listing = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        raise SearchError(
            f"episode {filters.episode!r} does not exist" + (f" (known episodes: {listing})" if known else "")
        )
    model = None
    if mode is Mode.text:
        if not models_cur.fetchone()[0]:
            raise SearchError("the database has no transcript chunks yet: run `gdr ingest` first")
    else:
        models = [StoredModel(*r) for r in models_cur.fetchall()]
        model = choose_model(conn, settings, request.model_id, models)
    if model is not None:
        params["qv"] = embed_query(embedder_for(model, settings), request.query, model.dimensions)
    fetch = request.fetch
    params.update(q=request.query, tsq=_text_query(stats_cur.fetchall()) if stats_cur else None,
                  cand=max(CANDIDATES, fetch) if mode is Mode.hybrid else fetch, fetch=fetch,
                  ctx=request.context, rrf_k=RRF_K)
    exact = estimate and exact_is_cheaper(estimate_cur.fetchone()[0][0]["Plan"]["Plan Rows"], params["cand"],
                                          chunks_cur.fetchone()[0] or 0.0)
    return _Prepared(request, model, build_sql(mode, model, filters, websearch=request.websearch, exact=exact),
                     params, exact)


def search(
    query: str,
    k: int = 5,
    *,
    episode: str | None = None,
    speaker: str | None = None,
    since: date | datetime | str | None = None,
    mode: Mode | str = DEFAULT_MODE,
    context: int = 0,
    model_id: str | None = None,
    settings: Settings | None = None,
    db: Database | None = None,
) -> SearchResults:
    """The top k results for `query` (a list of Hit, best first; see the module docstring).

    Pass an open `db` to reuse its pool (otherwise one is opened from `settings` and closed again).
    `context` adds that many neighbouring chunks before and after each hit; hits whose windows
    overlap (share a chunk) become one result spanning both, with the best score.
    Three round trips: the pool's connection check, the lookups, the search statement.
    """
    request = _validate(query, k, episode=episode, speaker=speaker, since=since, mode=mode, context=context,
                        model_id=model_id)
    settings = settings or Settings()
    with _opened(settings, db) as database, database.connection() as conn:
        prepared = _prepare(conn, request, settings)
        rows, exact = _run(conn, prepared)
        hits = _assemble(rows, request.k, request.context, settings.audio_dir.resolve())
        notice = None if hits else _empty_notice(conn, request.filters)
    return SearchResults(hits, mode=request.mode, model_id=prepared.model.model_id if prepared.model else None,
                         notice=notice, exact_fallback=exact)


def _run(conn: psycopg.Connection, p: _Prepared) -> tuple[list[tuple], bool]:
    """The rows, and whether the exact rerun was needed. The HNSW settings are transaction-local:
    they end with the commit that closes the pipeline."""
    request = p.request
    with conn.pipeline():
        if p.model is not None:
            _scan_settings(conn)
        # prepare=False: never a prepared statement, so never a generic plan. A generic plan does not see
        # the LIMITs or the filter values and may trade the HNSW scan for a sequential scan and a sort.
        cur = conn.execute(p.statement, p.params, prepare=False)
        conn.commit()
    rows = cur.fetchall()
    if p.model is not None and request.filters.any and not p.exact and (rows[0][-1] if rows else 0) < request.fetch:
        # The graph scan ran out of budget (HNSW_MAX_SCAN_TUPLES) before enough rows passed the filter.
        exact = build_sql(request.mode, p.model, request.filters, websearch=request.websearch, exact=True)
        return conn.execute(exact, p.params, prepare=False).fetchall(), True
    return rows, False


def explain(query: str, k: int = 5, *, analyze: bool = False, settings: Settings | None = None,
            db: Database | None = None, **options: Any) -> str:
    """The Postgres plan of the statement `search(query, k, **options)` runs first."""
    request = _validate(query, k, episode=options.get("episode"), speaker=options.get("speaker"),
                        since=options.get("since"), mode=options.get("mode", DEFAULT_MODE),
                        context=options.get("context", 0), model_id=options.get("model_id"))
    settings = settings or Settings()
    with _opened(settings, db) as database, database.connection() as conn:
        p = _prepare(conn, request, settings)
        if p.model is not None:
            _scan_settings(conn)
        prefix = "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN "
        return "\n".join(r[0] for r in conn.execute(prefix + p.statement, p.params, prepare=False))


@contextmanager
def _opened(settings: Settings, db: Database | None) -> Iterator[Database]:
    """The caller's database as it is, or one opened from `settings` for this call and closed after it."""
    if db is not None:
        yield db
        return
    with Database.from_settings(settings) as own:
        yield own


def _assemble(rows: list[tuple], k: int, context: int, audio_dir: Path) -> list[Hit]:
    """Group the rows into hits (score order), merge overlapping windows, keep the first k."""
    windows: list[_Window] = []
    current: tuple[str, int] | None = None
    hit_rows: list[tuple[tuple, dict[int, Segment]]] = []
    for row in rows:
        key = (row[0], row[1])
        if key != current:
            hit_rows.append((row, {}))
            current = key
        hit_rows[-1][1][row[11]] = Segment(row[11], row[12], float(row[13]), float(row[14]), row[15])
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
        main = w.segments.get(best[1]) or segments[0]
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


def _empty_notice(conn: psycopg.Connection, filters: _Filters) -> str:
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
