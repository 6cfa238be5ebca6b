"""Search the stored segments: HNSW cosine search, Postgres full-text search, or both fused (RRF).

One SQL statement does the search: the vector side is an HNSW scan of the model's partial index,
the text side a GIN search of `segments.tsv` ranked by ts_rank_cd, each taking its top
`CANDIDATES` with the filters applied inside the query; hybrid mode fuses the two rankings with
reciprocal rank fusion (score = sum of 1 / (60 + rank)) in SQL, and the same statement fetches the
neighbouring chunks asked for with `context`, plus the chunk after each hit. The second stage
(replies.py) then moves the reply to a matching question just above it. A search is three round trips
on one pooled connection: the pool's connection check, the lookups (episode, stored models, lexeme
statistics; pipelined), and the statement with its transaction-local HNSW settings (pipelined with the
commit).
BENCHMARKS.md, "Search latency and recall" and "Design figures", has where the time goes at 100k chunks.

Filters are applied inside the HNSW scan, with pgvector 0.8's iterative scan
(`hnsw.iterative_scan = relaxed_order`, up to `hnsw.max_scan_tuples`) so a selective filter keeps
scanning the graph instead of returning fewer than k rows. If the scan still comes back short (a
filter matching a tiny fraction of a large table), the vector side is rerun as an exact scan. A
speaker filter selective enough that ranking all of the speaker's chunks costs less than the graph
walk (by the planner's estimate, see exact_is_cheaper) is served by the exact scan from the start.

Filters:
- `episode`: the episode id (an unknown id is an error);
- `speaker`: case-insensitive; matches a speaker whose full name equals it ("priya raman") or whose
  name starts with it as whole words ("priya" matches "Priya Raman", "pri" does not);
- `since` / `until`: the episode's `published` date is on or after / on or before it (episodes without a
  date are excluded).

Scores: `Hit.score` is the mode's ranking value (vector = cosine similarity of the best chunk, text =
ts_rank_cd, hybrid = RRF, also in `Hit.rrf`; a credited reply's is its question's when higher, and
`Hit.reply_to` holds the question's raw scores); `Hit.relevance` is what to read and threshold: in [0, 1],
the estimated chance the hit answers the query, never increasing down the list (relevance.py).
`min_score` keeps the hits whose relevance reaches it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import class_row

from ..errors import ConfigError
from ..providers.embedders import Embedder
from ..providers.registry import ModelId, provider_registry
from ..settings import Settings
from ..storage.database import Database
from ..storage.rows import first_value
from .assembly import assemble, empty_notice
from .relevance import relevance_basis, with_relevance
from .statements import (
    CANDIDATES,
    CHUNKS_SQL,
    MAX_FETCH,
    RRF_K,
    SearchRow,
    build_sql,
    estimate_sql,
    exact_is_cheaper,
    scan_settings,
    search_row,
)
from .text_query import TEXT_STATS_SQL, lexeme_stats, plan_text_query, uses_websearch_syntax
from .types import DEFAULT_MODE, Filters, Mode, SearchError, SearchResults, StoredModel, parse_mode, parse_since

STORED_MODELS_SQL = """SELECT m.model_id, m.provider, m.model, m.dimensions, m.index_kind FROM embedding_models m
    WHERE EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = m.model_id) ORDER BY m.model_id"""
stored_model = class_row(StoredModel)


def stored_models(conn: psycopg.Connection) -> list[StoredModel]:
    """Registered models that have at least one stored vector."""
    return conn.cursor(row_factory=stored_model).execute(STORED_MODELS_SQL).fetchall()


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
    preferred = str(provider_registry(settings).settings_model())
    for m in models:
        if m.model_id == preferred:
            return m
    counts: dict[str, int] = dict(conn.execute("SELECT model_id, count(*) FROM embeddings GROUP BY model_id").fetchall())
    return max(models, key=lambda m: (counts.get(m.model_id, 0), m.model_id))


def query_embedder(model: StoredModel, settings: Settings) -> Embedder:
    """A new embedder of queries comparable with `model`'s vectors (the registry's), or a SearchError saying what
    is missing (local vectors: MiniLM on int8 kernels, see providers/embedders/local_minilm.py)."""
    try:
        return provider_registry(settings).embedder_for(ModelId(model.provider, model.model, model.dimensions))
    except ConfigError as exc:
        raise SearchError(str(exc)) from None


def embed_query(embedder: Embedder, query: str, dimensions: int) -> np.ndarray:
    vector = embedder.embed([query]).vectors[0]
    if vector.shape != (dimensions,):
        raise SearchError(f"the query embedding has {vector.shape[0]} dimensions, the stored vectors {dimensions}")
    return vector


@dataclass(frozen=True, slots=True)
class _Request:
    """A validated search request."""

    query: str
    k: int
    mode: Mode
    filters: Filters
    context: int
    model_id: str | None
    min_score: float = 0.0

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
              mode: Mode | str, context: int, model_id: str | None, min_score: float = 0.0,
              until: date | datetime | str | None = None) -> _Request:
    if not isinstance(query, str) or not query.strip():
        raise SearchError("the search query is empty")
    if k < 1:
        raise SearchError(f"k must be at least 1 (got {k})")
    if context < 0:
        raise SearchError(f"context must be 0 or more chunks (got {context})")
    if not 0.0 <= min_score <= 1.0:
        raise SearchError(f"min_score is a relevance between 0 and 1 (got {min_score})")
    if speaker is not None and not speaker.strip():
        raise SearchError("the speaker filter is empty")
    first, last = parse_since(since), parse_since(until, "until")
    if first and last and first > last:
        raise SearchError(f"the date range is empty: since {first.isoformat()} is after until {last.isoformat()}")
    filters = Filters(episode=str(episode) if episode is not None else None,
                       speaker=speaker.strip() if speaker else None, since=first, until=last)
    return _Request(query.strip(), k, parse_mode(mode), filters, context, model_id, min_score)


class Searcher:
    """Searches one database; keeps the query embedders it built, so repeated searches (a server, the
    bench) load each model once. `gdr search` makes one per command."""

    def __init__(self, settings: Settings, db: Database):
        self.settings = settings
        self.db = db
        self._embedders: dict[str, Embedder] = {}

    def _query_embedder(self, model: StoredModel) -> Embedder:
        if model.model_id not in self._embedders:
            self._embedders[model.model_id] = query_embedder(model, self.settings)
        return self._embedders[model.model_id]

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        episode: str | None = None,
        speaker: str | None = None,
        since: date | datetime | str | None = None,
        until: date | datetime | str | None = None,
        mode: Mode | str = DEFAULT_MODE,
        context: int = 0,
        model_id: str | None = None,
        min_score: float = 0.0,
    ) -> SearchResults:
        """The top k results for `query` (a list of Hit, best first; see the module docstring).

        `context` adds that many neighbouring chunks before and after each hit; hits whose windows
        overlap (share a chunk) become one result spanning both, with the best score. `min_score` drops
        the hits whose relevance is below it (fewer than k results, or none with a notice saying the best).
        Three round trips: the pool's connection check, the lookups, the search statement.
        """
        request = _validate(query, k, episode=episode, speaker=speaker, since=since, mode=mode, context=context,
                            model_id=model_id, min_score=min_score, until=until)
        with self.db.connection() as conn:
            prepared = self._prepare(conn, request)
            rows, exact = _run(conn, prepared)
            searched = prepared.model.model_id if prepared.model else None
            found = with_relevance(assemble(rows, request.k, request.context, self.settings.audio_dir.resolve(),
                                            request.filters.speaker), request.mode, searched)
            hits = [h for h in found if h.relevance >= request.min_score]
            if hits:
                notice = None
            elif found:
                notice = (f"no results with relevance >= {request.min_score:g} "
                          f"(the best, {found[0].title!r} at {found[0].time_range}, has {found[0].relevance:.2f})")
            else:
                notice = empty_notice(conn, request.filters)
        return SearchResults(hits, mode=request.mode, model_id=searched, notice=notice, exact_fallback=exact,
                             relevance_basis=relevance_basis(request.mode, searched))



    def _prepare(self, conn: psycopg.Connection, request: _Request) -> _Prepared:
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
                any_chunk_cur = conn.execute("SELECT EXISTS (SELECT 1 FROM segments)")
            else:
                models_cur = conn.cursor(row_factory=stored_model).execute(STORED_MODELS_SQL)
            stats_cur = conn.cursor(row_factory=lexeme_stats).execute(TEXT_STATS_SQL, (request.query,)) if needs_text else None
            if estimate:
                estimate_cur = conn.execute(estimate_sql(filters.shape), params, prepare=False)
                chunks_cur = conn.execute(CHUNKS_SQL)
        if episode_cur is not None and not first_value(episode_cur):
            known = [r[0] for r in conn.execute("SELECT episode_id FROM episodes ORDER BY episode_id LIMIT 21")]
            listing = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
            raise SearchError(
                f"episode {filters.episode!r} does not exist" + (f" (known episodes: {listing})" if known else "")
            )
        model = None
        if mode is Mode.text:
            if not first_value(any_chunk_cur):
                raise SearchError("the database has no transcript chunks yet: run `gdr ingest` first")
        else:
            models = models_cur.fetchall()
            model = choose_model(conn, self.settings, request.model_id, models)
        if model is not None:
            params["qv"] = embed_query(self._query_embedder(model), request.query, model.dimensions)
        fetch = request.fetch
        params.update(q=request.query, tsq=plan_text_query(stats_cur.fetchall()) if stats_cur else None,
                      cand=max(CANDIDATES, fetch) if mode is Mode.hybrid else fetch, fetch=fetch,
                      ctx=request.context, rrf_k=RRF_K)
        exact = estimate and exact_is_cheaper(first_value(estimate_cur)[0]["Plan"]["Plan Rows"], params["cand"],
                                              first_value(chunks_cur) or 0.0)
        return _Prepared(request, model, build_sql(mode, model, filters, websearch=request.websearch, exact=exact),
                         params, exact)



    def explain(self, query: str, k: int = 5, *, analyze: bool = False, **options: Any) -> str:
        """The Postgres plan of the statement `search(query, k, **options)` runs first."""
        request = _validate(query, k, episode=options.get("episode"), speaker=options.get("speaker"),
                            since=options.get("since"), mode=options.get("mode", DEFAULT_MODE),
                            context=options.get("context", 0), model_id=options.get("model_id"),
                            until=options.get("until"))
        with self.db.connection() as conn:
            p = self._prepare(conn, request)
            if p.model is not None:
                scan_settings(conn)
            prefix = "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN "
            return "\n".join(r[0] for r in conn.execute(prefix + p.statement, p.params, prepare=False))




def _run(conn: psycopg.Connection, p: _Prepared) -> tuple[list[SearchRow], bool]:
    """The rows, and whether the exact rerun was needed. The HNSW settings are transaction-local:
    they end with the commit that closes the pipeline."""
    request = p.request
    with conn.pipeline():
        if p.model is not None:
            scan_settings(conn)
        # prepare=False: never a prepared statement, so never a generic plan. A generic plan does not see
        # the LIMITs or the filter values and may trade the HNSW scan for a sequential scan and a sort.
        cur = conn.cursor(row_factory=search_row).execute(p.statement, p.params, prepare=False)
        conn.commit()
    rows = cur.fetchall()
    found = (rows[0].vector_candidates or 0) if rows else 0
    if p.model is not None and request.filters.any and not p.exact and found < request.fetch:
        # The graph scan ran out of budget (HNSW_MAX_SCAN_TUPLES) before enough rows passed the filter.
        exact = build_sql(request.mode, p.model, request.filters, websearch=request.websearch, exact=True)
        return conn.cursor(row_factory=search_row).execute(exact, p.params, prepare=False).fetchall(), True
    return rows, False


@contextmanager
def opened_searcher(settings: Settings | None = None, db: Database | None = None) -> Iterator[Searcher]:
    """A searcher on `db` as it is, or on the settings' database opened for this block and closed after it."""
    settings = settings or Settings()
    if db is not None:
        yield Searcher(settings, db)
        return
    with Database.from_settings(settings) as own:
        yield Searcher(settings, own)


def search(query: str, k: int = 5, *, settings: Settings | None = None, db: Database | None = None,
           **options: Any) -> SearchResults:
    """One `Searcher.search` (from a shell, or a command that searches once)."""
    with opened_searcher(settings, db) as searcher:
        return searcher.search(query, k, **options)


def explain(query: str, k: int = 5, *, settings: Settings | None = None, db: Database | None = None,
            **options: Any) -> str:
    """One `Searcher.explain`."""
    with opened_searcher(settings, db) as searcher:
        return searcher.explain(query, k, **options)
