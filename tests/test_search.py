"""Search against a real Postgres + pgvector with the real local embedder (all-MiniLM-L6-v2).

Three read-only databases are built once per module: the four sample episodes stored from their
ground-truth scripts (one chunk per turn), and 2,000 and 50,000 synthetic chunks where one speaker owns 2%
(the planner's own choices differ between the two: exact scans at 2,000, the HNSW index at 50,000).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from gent_disagreement_rag.cli import app
from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMEmbedder
from gent_disagreement_rag.search import (
    DEFAULT_MODE,
    RRF_K,
    Mode,
    SearchError,
    choose_model,
    deep_link,
    engine,
    explain,
    format_time,
    relevance,
    search,
    statements,
    text_query,
)
from gent_disagreement_rag.search.assembly import assemble
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.sources.catalogue import CatalogueEntry
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.text.chunking import Chunk
from tests.support.builders import segment
from tests.support.paths import REPO_ROOT
from tests.support.samples import module_database, store_sample_episodes

LOCAL_MODEL = "local/all-MiniLM-L6-v2@384"
OPENAI_MODEL = "openai/text-embedding-3-small@1536"


@pytest.fixture(scope="module")
def embedder() -> LocalMiniLMEmbedder:
    return LocalMiniLMEmbedder()


def put(db: Database, episode_id: str, segs: list[Chunk], vectors: np.ndarray, model_id: str = LOCAL_MODEL) -> None:
    provider, rest = model_id.split("/", 1)
    segment_store.store_episode(db, episode_id, segs, model_id=model_id, provider=provider, model=rest.split("@")[0],
                        vectors=vectors)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


# --- the sample episodes, from their scripts --------------------------------------------------------


@pytest.fixture(scope="module")
def samples(pg_server: str, tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[tuple[Settings, Database]]:
    with module_database(pg_server, tmp_path_factory.mktemp("samples")) as (settings, db):
        store_sample_episodes(db, embedder)
        yield settings, db


def script_turn(episode: int, text: str) -> tuple[int, dict]:
    """(position, turn) of the sample script turn containing `text` (the scripts are regenerated, so no
    timestamps are hard-coded here)."""
    script = json.loads((REPO_ROOT / "data" / "samples" / f"GDR-{episode:03d}.script.json").read_text())
    return next((i, t) for i, t in enumerate(script["turns"]) if text in t["text"])


def first_right_rank(hits, question: dict) -> int | None:
    """Rank of the first hit in the expected episode whose time range overlaps the expected turn."""
    return next((h.rank for h in hits if h.episode_id == str(question["episode_id"])
                 and h.start < question["end"] and h.end > question["start"]), None)


def test_sample_questions_hit_at_3(samples, record_property) -> None:
    settings, db = samples
    questions = json.loads((REPO_ROOT / "tests" / "search_questions.json").read_text())
    report = {}
    for mode in Mode:
        ranks = [first_right_rank(search(q["question"], 10, mode=mode, settings=settings, db=db), q) for q in questions]
        hit3 = sum(1 for r in ranks if r is not None and r <= 3)
        mrr = sum(1 / r for r in ranks if r) / len(questions)
        report[mode.value] = {"hit@3": hit3, "MRR": round(mrr, 3), "ranks": ranks}
    print(f"\nsearch quality over {len(questions)} questions: {json.dumps(report)}")
    record_property("search_quality", report)
    # Every question, as search.py's measurement table documents (the brief's bar was 8 of 10).
    assert report[DEFAULT_MODE.value]["hit@3"] == len(questions), report


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (intercept, slope) of P(y) = sigmoid(intercept + slope * x), by Newton's method."""
    X = np.c_[np.ones_like(x), x]
    w = np.zeros(2)
    for _ in range(50):
        p = 1 / (1 + np.exp(-X @ w))
        w -= np.linalg.solve(X.T @ (X * (p * (1 - p))[:, None]) + 1e-3 * np.eye(2), X.T @ (p - y) + 1e-3 * w)
    return float(w[0]), float(w[1])


def test_relevance_calibration_matches_the_sample_questions(samples) -> None:
    """The curves in relevance.py are what a refit on the sample questions gives, and they are calibrated:
    the mean relevance of the top 10 hits is the share of them that answer."""
    settings, db = samples
    questions = json.loads((REPO_ROOT / "tests" / "search_questions.json").read_text())
    for mode, calibration in [(Mode.vector, relevance.VECTOR_CALIBRATIONS[LOCAL_MODEL]),
                              (Mode.text, relevance.TEXT_CALIBRATION)]:
        xs, ys = [], []
        for q in questions:
            for h in search(q["question"], 10, mode=mode, settings=settings, db=db):
                xs.append(relevance.evidence(h, mode))
                ys.append(float(first_right_rank([h], q) is not None))
        x, y = np.array(xs), np.array(ys)
        intercept, slope = fit_logistic(x, y)
        grid = np.quantile(x, [0.5, 0.9, 0.99])
        refit = 1 / (1 + np.exp(-(intercept + slope * grid)))
        assert np.abs(refit - np.array([calibration(g) for g in grid])).max() < 0.05, (mode, intercept, slope)
        assert abs(np.mean([calibration(v) for v in x]) - y.mean()) < 0.03, mode


def test_relevance_is_in_0_1_and_never_rises_down_the_ranking(samples) -> None:
    settings, db = samples
    questions = json.loads((REPO_ROOT / "tests" / "search_questions.json").read_text())
    for mode in Mode:
        for q in questions:
            hits = search(q["question"], 10, mode=mode, settings=settings, db=db)
            values = [h.relevance for h in hits]
            assert all(0 <= v <= 1 for v in values) and values == sorted(values, reverse=True), (mode, values)
            if mode is Mode.hybrid:  # hits only the text side found still have their cosine similarity
                assert all(h.rrf == h.score for h in hits)
                assert all(h.vector_score is not None for h in hits if h.reply_to is None)
                assert all(h.reply_to.vector_score is not None for h in hits if h.reply_to is not None)
    [hit] = search("Who coined the word transistor and what is it short for?", 1, settings=settings, db=db)
    [off_topic] = search("how does the offside rule work in football", 1, settings=settings, db=db)
    assert hit.relevance > 0.25 and off_topic.relevance < 0.02, (hit, off_topic)  # the answer vs nothing relevant
    assert search("Who coined the word transistor and what is it short for?", 1, mode="vector", settings=settings,
                  db=db).relevance_basis == f"calibrated on the sample questions: cosine similarity, {LOCAL_MODEL}"


def test_min_score_filters_and_an_unreachable_threshold_says_so(samples) -> None:
    settings, db = samples
    query = "Which parasite spreads deformed wing virus in honeybee hives?"
    every = search(query, 10, settings=settings, db=db)
    kept = search(query, 10, min_score=0.2, settings=settings, db=db)
    assert 0 < len(kept) < len(every)
    assert kept == [h for h in every if h.relevance >= 0.2] and kept == every[: len(kept)]
    none = search(query, 10, min_score=1.0, settings=settings, db=db)
    assert none == [] and none.notice.startswith("no results with relevance >= 1 (the best, ")
    assert f"has {every[0].relevance:.2f})" in none.notice
    with pytest.raises(SearchError, match="min_score is a relevance between 0 and 1"):
        search(query, min_score=2, settings=settings, db=db)
    result = run_cli(settings, query, "--min-score", "0.2", "--json")
    data = json.loads(result.stdout)
    assert [r["relevance"] for r in data["results"]] == [h.relevance for h in kept]
    assert {"relevance", "score", "rrf", "vector_score", "vector_rank", "text_score", "text_rank"} <= data["results"][0].keys()
    assert data["relevance_basis"].startswith("calibrated on the sample questions")
    result = run_cli(settings, query, "--min-score", "1")
    assert result.exit_code == 0 and "no results with relevance >= 1" in result.output


def test_hit_fields_and_local_deep_link(samples) -> None:
    settings, db = samples
    position, turn = script_turn(1, "parasitic mite that feeds")
    [hit] = search("parasitic mite deformed wing virus", 1, mode="vector", settings=settings, db=db)
    assert (hit.rank, hit.episode_id, hit.position, hit.speaker) == (1, "1", position, turn["speaker_name"])
    assert hit.title == "Bees on the Roof: Urban Beekeeping and Pollinator Decline"
    assert hit.published == date(2025, 1, 15)
    assert hit.text == turn["text"] and (hit.start, hit.end) == (turn["start"], turn["end"])
    assert hit.link == f"{settings.audio_dir.resolve() / 'GDR-001.mp3'}#t={math.floor(turn['start'])}"
    assert hit.time_range == f"{format_time(turn['start'])}–{format_time(turn['end'])}"
    assert hit.vector_score == pytest.approx(hit.score) and 0 < hit.score <= 1
    data = hit.as_json()
    for key in ("episode_id", "title", "speaker", "start", "end", "text", "score", "rank", "link", "position"):
        assert key in data
    assert isinstance(data["start"], float) and isinstance(data["end"], float)
    assert format_time(3725.9) == "01:02:05"


def test_context_includes_neighbours(samples) -> None:
    settings, db = samples
    [plain] = search("parasitic mite deformed wing virus", 1, mode="vector", settings=settings, db=db)
    [wide] = search("parasitic mite deformed wing virus", 1, mode="vector", context=2, settings=settings, db=db)
    p = plain.position
    assert wide.position == p and wide.matched_positions == (p,)
    assert wide.positions == tuple(range(p - 2, p + 3))
    assert wide.score == plain.score
    assert wide.start < plain.start and wide.end > plain.end
    assert plain.text in wide.text and len(wide.segments) == 5
    assert wide.link == plain.link  # the cited moment, not the start of its context
    assert wide.cited == plain.cited and wide.cited_range == plain.time_range


def test_filters_on_sample_episodes(samples) -> None:
    settings, db = samples
    hits = search("bees", 5, speaker="priya", settings=settings, db=db)
    assert len(hits) == 5 and {h.speaker for h in hits} == {"Priya Raman"}
    assert [h.speaker for h in search("bees", 3, speaker="PRIYA RAMAN", settings=settings, db=db)] == ["Priya Raman"] * 3
    hits = search("bees", 5, episode="3", settings=settings, db=db)
    assert len(hits) == 5 and {h.episode_id for h in hits} == {"3"}
    hits = search("tax", 8, since="2025-01-29", settings=settings, db=db)
    assert len(hits) == 8 and {h.episode_id for h in hits} <= {"3", "4"}
    assert {h.episode_id for h in search("tax", 8, since=date(2025, 2, 1), settings=settings, db=db)} == {"4"}


def test_speaker_matching_nothing_is_an_empty_result_with_a_notice(samples) -> None:
    settings, db = samples
    hits = search("bees", 5, speaker="pri", settings=settings, db=db)  # a prefix of a name, not a whole word
    assert hits == [] and "no results from a speaker matching 'pri'" in hits.notice
    assert "Priya Raman" in hits.notice


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query": ""}, "the search query is empty"),
        ({"query": "   \n"}, "the search query is empty"),
        ({"query": "bees", "episode": "999"}, "episode '999' does not exist (known episodes: 1, 2, 3, 4)"),
        ({"query": "bees", "since": "last week"}, "is not a date"),
        ({"query": "bees", "mode": "fuzzy"}, "unknown search mode"),
        ({"query": "bees", "model_id": "openai/nope@3"}, "no vectors stored for model 'openai/nope@3'; available: local/"),
    ],
)
def test_bad_requests_are_clear_errors(samples, kwargs, message) -> None:
    settings, db = samples
    with pytest.raises(SearchError) as err:
        search(**kwargs, settings=settings, db=db)
    assert message in str(err.value)


def run_cli(settings: Settings, *args: str):
    env = {"DATABASE_URL": settings.external_database_url(), "GDR_HOME": str(settings.gdr_home),
           "AUDIO_DIR": str(settings.audio_dir), "EMBEDDER": "local", "COLUMNS": "400"}  # (table rows unwrapped)
    return CliRunner().invoke(app, ["search", *args], env=env)


def test_cli_json_equals_the_python_api(samples) -> None:
    settings, db = samples
    result = run_cli(settings, "who invented the transistor", "-k", "4", "--context", "1", "--speaker", "daniel", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    api = search("who invented the transistor", 4, context=1, speaker="daniel", settings=settings, db=db)
    assert data["results"] == json.loads(json.dumps([h.as_json() for h in api]))
    assert data["mode"] == DEFAULT_MODE.value and data["model_id"] == LOCAL_MODEL and len(data["results"]) == 4
    for mode in ("vector", "text"):
        result = run_cli(settings, "sourdough starter yeast", "--mode", mode, "--json")
        api = search("sourdough starter yeast", mode=mode, context=1, settings=settings, db=db)  # the CLI default
        assert json.loads(result.stdout)["results"] == json.loads(json.dumps([h.as_json() for h in api]))


def test_cli_table_and_exit_codes(samples) -> None:
    settings, _ = samples
    _, turn = script_turn(1, "first bumblebee listed as endangered")
    result = run_cli(settings, "rusty patched bumblebee", "-k", "2")
    assert result.exit_code == 0, result.output
    cells = re.sub(r"[\s│]+", "", result.stdout)  # the cells' text, unwrapped
    assert "BeesontheRoof" in cells and f"GDR-001.mp3#t={math.floor(turn['start'])}" in cells
    assert f"{format_time(turn['start'])}–{format_time(turn['end'])}" in cells
    result = run_cli(settings, "bees", "--speaker", "nobody")
    assert result.exit_code == 0 and "no results from a speaker matching 'nobody'" in result.output
    for args, message in [(["  "], "the search query is empty"), (["bees", "--episode", "42"], "episode '42' does not exist")]:
        result = run_cli(settings, *args)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


# --- 2,000 and 50,000 synthetic chunks: filters, iterative scans, the index --------------------------

TOPICS = [
    "Honeybees keep their hives warm through the winter by clustering and shivering their flight muscles.",
    "The transistor replaced vacuum tubes and made pocket radios possible.",
    "A sourdough starter is a culture of wild yeast and lactic acid bacteria.",
    "A carbon tax puts a price on every tonne of carbon dioxide emitted.",
    "The offside rule in football stops attackers from waiting beside the goalkeeper.",
    "Jazz musicians improvise over the chord changes of a standard.",
    "Volcanic eruptions can cool the planet by filling the stratosphere with sulphate aerosols.",
    "Marathon runners hit the wall when their muscles run out of glycogen.",
    "The Roman aqueducts carried water for kilometres on a gentle downhill slope.",
    "Chess engines search millions of positions per second.",
    "Coral reefs bleach when the water gets too warm for their algae.",
    "Interest rates rise when the central bank wants to slow inflation.",
    "Octopuses can change colour in a fraction of a second.",
    "The printing press made books cheap enough for ordinary people.",
    "Glaciers carve U-shaped valleys as they grind down mountains.",
    "Vaccines train the immune system to recognise a pathogen.",
    "Electric cars are heavier than petrol cars because of their batteries.",
    "The Silk Road linked China with the Mediterranean for centuries.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "Tea ceremonies in Japan follow a precise sequence of gestures.",
]
SYNTH_EPISODES = 20
SYNTH_CHUNKS = 100  # per episode: 2,000 chunks in all
# 50,000 chunks: from ~10,000 the planner takes the HNSW index for an unfiltered search; a 2% speaker needs
# more than 31,250 in vector mode before walking the graph beats ranking its chunks (exact_is_cheaper).
LARGE_EPISODES = 500
RARE = "Rare Voice"  # owns 2 chunks per episode: 2% of the chunks


def synth_speaker(episode: int, position: int) -> str:
    if position % 50 == 7:
        return RARE
    return "Alice Host" if position % 2 else "Bob Guest"


def load_synthetic(db: Database, topic_vectors: np.ndarray, episodes: int) -> None:
    """`episodes` synthetic episodes of SYNTH_CHUNKS chunks each, stored by the store. The HNSW index is
    dropped after the first episode and rebuilt from its own definition after the last: the store's
    row-by-row index upkeep would take minutes for a large corpus (BENCHMARKS.md, store throughput)."""
    rng = np.random.default_rng(7)
    start = date(2024, 1, 1)
    episode_store.sync_catalogue(db, [
        CatalogueEntry(episode_id=f"S{e:02d}", title=f"Synthetic {e}", file_name=f"S{e:02d}.mp3",
                       published=start + timedelta(weeks=e), audio_url=f"https://example.org/S{e:02d}.mp3")
        for e in range(episodes)
    ])
    index = segment_store.index_name(LOCAL_MODEL)
    for e in range(episodes):
        topics = [(e * 7 + p * 3) % len(TOPICS) for p in range(SYNTH_CHUNKS)]
        segs = [segment(p, synth_speaker(e, p), p * 20.0, p * 20.0 + 19.0, f"{TOPICS[t]} Part {e}.{p}.", 20)
                for p, t in enumerate(topics)]
        put(db, f"S{e:02d}", segs, unit(topic_vectors[topics] + rng.normal(scale=0.015, size=(SYNTH_CHUNKS, 384))))
        if e == 0:
            with db.connection() as conn:
                [(definition,)] = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index,))
                conn.execute(f"DROP INDEX {index}")
    with db.connection() as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")  # the graph built in memory, not on disk
        conn.execute(definition)
        conn.execute("ANALYZE")


@pytest.fixture(scope="module")
def synthetic(pg_server: str, tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[tuple[Settings, Database]]:
    with module_database(pg_server, tmp_path_factory.mktemp("synthetic")) as (settings, db):
        load_synthetic(db, embedder.embed(TOPICS).vectors, SYNTH_EPISODES)
        yield settings, db


@pytest.fixture(scope="module")
def large_synthetic(pg_server: str, tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[tuple[Settings, Database]]:
    """The same pattern over LARGE_EPISODES episodes: big enough for the planner to take the HNSW index by
    itself, and for the speaker filter's estimate to choose the graph walk in vector mode."""
    with module_database(pg_server, tmp_path_factory.mktemp("large")) as (settings, db):
        load_synthetic(db, embedder.embed(TOPICS).vectors, LARGE_EPISODES)
        yield settings, db


def test_small_corpora_are_ranked_exactly_large_ones_through_the_hnsw_index(synthetic, large_synthetic) -> None:
    index = segment_store.index_name(LOCAL_MODEL)
    for options in ({"mode": "vector"}, {"mode": "hybrid"}, {"mode": "vector", "speaker": RARE}):
        small = explain("bees wintering in the hive", 5, settings=synthetic[0], db=synthetic[1], **options)
        assert index not in small, small  # 2,000 rows: a sequential scan and a sort beat the graph
        plan = explain("bees wintering in the hive", 5, settings=large_synthetic[0], db=large_synthetic[1], **options)
        assert f"Index Scan using {index} on embeddings" in plan, plan


def test_selective_speaker_filter_still_returns_k(large_synthetic) -> None:
    settings, db = large_synthetic
    query = "bees wintering in the hive"
    for mode in ("vector", "hybrid"):  # the graph walk in vector mode; hybrid's 50 candidates are ranked exactly
        hits = search(query, 5, speaker="rare voice", mode=mode, settings=settings, db=db)
        assert len(hits) == 5 and {h.speaker for h in hits} == {RARE}, (mode, hits)
        assert not hits.exact_fallback  # no rerun: the iterative HNSW scan found them (vector mode)
    plan = explain(query, 5, analyze=True, speaker=RARE, mode="vector", settings=settings, db=db)
    assert f"Index Scan using {segment_store.index_name(LOCAL_MODEL)}" in plan and "Rows Removed by Filter" in plan, plan
    # Without iterative scans the same statement starves: the filter is selective enough to matter. The walk then
    # yields ef_search candidates only, of which ~2% are the rare speaker's; at ef_search 10 (not 100) that is
    # ~0.2 of them whatever graph this build made, so "fewer than 5" is not a matter of chance.
    request = engine._validate(query, 5, episode=None, speaker=RARE, since=None, mode="vector", context=0,
                                      model_id=None)
    with db.connection() as conn:
        prepared = engine.Searcher(settings, db)._prepare(conn, request)
        assert not prepared.exact
        statements.scan_settings(conn)
        conn.execute("SELECT set_config('hnsw.iterative_scan', 'off', true), set_config('hnsw.ef_search', '10', true)")
        rows = conn.cursor(row_factory=statements.search_row).execute(prepared.statement, prepared.params,
                                                                      prepare=False).fetchall()
    assert len(assemble(rows, 5, 0, settings.audio_dir.resolve(), RARE)) < 5  # (a hit's rows: its chunk and the next)


def test_selective_speaker_is_ranked_exactly_with_the_graph_walks_results(synthetic, large_synthetic) -> None:
    query = "bees wintering in the hive"
    # RARE owns 40 of 2,000 chunks: ranking them all is cheaper than walking the graph for 5 of them.
    assert statements.exact_is_cheaper(40, 5, 2_000)
    assert statements.exact_is_cheaper(1_000, 10, 100_000) and not statements.exact_is_cheaper(50_000, 10, 100_000)
    settings, db = synthetic
    for mode in ("vector", "hybrid"):
        plan = explain(query, 5, speaker=RARE, mode=mode, settings=settings, db=db)
        assert segment_store.index_name(LOCAL_MODEL) not in plan, plan
        exact = search(query, 5, speaker=RARE, mode=mode, settings=settings, db=db)
        assert not exact.exact_fallback and {h.speaker for h in exact} == {RARE}
    # The top vector hits are on topic (the rare speaker has two honeybee chunks in 20 episodes).
    hits = search(query, 3, speaker=RARE, mode="vector", settings=settings, db=db)
    assert ["Honeybees" in h.text for h in hits] == [True, True, False]
    # Where the search walks the graph (vector mode, 50,000 chunks) or ranks exactly (hybrid), the statement of
    # the other kind, run on the same request, finds chunks that pass the same filter with the same scores. A walk
    # is approximate: the rare speaker has ~100 honeybee chunks a little noise apart, and which 5 of them a
    # filtered walk meets first depends on the graph's build (its random levels). So its hits are checked
    # against the exact ranking of all of them: same scores, never above the exact ones rank by rank, and close.
    settings, db = large_synthetic
    for mode, walks in (("vector", True), ("hybrid", False)):
        found = search(query, 5, speaker=RARE, mode=mode, settings=settings, db=db)
        request = engine._validate(query, 5, episode=None, speaker=RARE, since=None, mode=mode, context=0,
                                   model_id=None)
        with db.connection() as conn:
            prepared = engine.Searcher(settings, db)._prepare(conn, request)
            assert prepared.exact is not walks, mode
            other = statements.build_sql(request.mode, prepared.model, request.filters, exact=walks)
            every = statements.build_sql(Mode.vector, prepared.model, request.filters, exact=True)
            statements.scan_settings(conn)
            rows = conn.cursor(row_factory=statements.search_row).execute(other, prepared.params,
                                                                          prepare=False).fetchall()
            everything = dict(prepared.params, fetch=2 * LARGE_EPISODES, cand=2 * LARGE_EPISODES)
            all_rows = conn.cursor(row_factory=statements.search_row).execute(every, everything,
                                                                              prepare=False).fetchall()
        audio = settings.audio_dir.resolve()
        other_hits = assemble(rows, 5, 0, audio, RARE)
        walk, exact = (found, other_hits) if walks else (other_hits, found)
        ranking = assemble(all_rows, 2 * LARGE_EPISODES, 0, audio, RARE)  # all of RARE's chunks
        scores = {(h.episode_id, h.position): h.vector_score for h in ranking}
        assert len(walk) == 5 and all(h.vector_score == pytest.approx(scores[h.episode_id, h.position], abs=1e-6)
                                      for h in walk), (mode, walk)
        assert len(ranking) == 2 * LARGE_EPISODES and len(exact) == 5
        if mode == "vector":  # the exact statement's top 5 are the best 5 of all; the walk's are close to them
            assert [(h.episode_id, h.position) for h in exact] == [(h.episode_id, h.position) for h in ranking[:5]]
            best = [h.vector_score for h in ranking[:5]]
            # Never above the exact ranking, rank by rank. How close below it is not asserted: on this corpus (each
            # topic a tight cluster of near-duplicates) a filtered walk sometimes leaves the cluster and returns the
            # speaker's chunks of other topics (cosine ~0.2 where the best are ~0.73; 3 of 4 runs of this module on
            # 2026-12-03, whatever the graph's build). That is a search-quality limit of filtered HNSW walks, measured
            # at scale in BENCHMARKS.md "A million chunks", not something this test can hold steady.
            assert all(w.vector_score <= b + 1e-6 for w, b in zip(walk, best, strict=True)), (walk, best)
        assert not found.exact_fallback and {h.speaker for h in found} == {RARE}


def test_episode_and_date_filters_return_only_matching_rows(synthetic) -> None:
    settings, db = synthetic
    for mode in Mode:
        hits = search("carbon tax on emissions", 5, episode="S03", mode=mode, settings=settings, db=db)
        assert len(hits) == 5 and {h.episode_id for h in hits} == {"S03"}
        hits = search("carbon tax on emissions", 10, since="2024-04-01", mode=mode, settings=settings, db=db)
        assert len(hits) == 10
        assert all(h.published >= date(2024, 4, 1) for h in hits)
        hits = search("carbon tax on emissions", 5, episode="S03", speaker="alice", mode=mode, settings=settings, db=db)
        assert len(hits) == 5 and {(h.episode_id, h.speaker) for h in hits} == {("S03", "Alice Host")}
    hit = search("carbon tax", 1, episode="S03", settings=settings, db=db)[0]
    assert hit.link == f"https://example.org/S03.mp3#t={math.floor(hit.start)}"


# --- small hand-made cases -------------------------------------------------------------------------


def test_rrf_fusion_lifts_a_rare_term_only_text_search_finds(db: Database, settings: Settings, embedder) -> None:
    texts = [
        "Albatrosses soar for hours over the ocean without flapping their wings.",
        "The Wright brothers took to the air at Kitty Hawk in 1903.",
        "Swifts stay airborne for months, even sleeping on the wing.",
        "Gliders ride rising columns of warm air called thermals.",
        "Bats are the only mammals capable of true powered flight.",
        "Hummingbirds hover by beating their wings fifty times a second.",
        "The council met on Tuesday about parking permits, bin collections, the library budget and, briefly, "
        "a planning objection from Mr Quetzalcoatlus about his neighbour's shed.",
        "Paper planes travel further with a heavier nose.",
        "Hot air balloons rise because warm air is lighter than cold air.",
        "Dragonflies move each of their four wings independently.",
    ]
    episode_store.sync_catalogue(db, [CatalogueEntry(episode_id="air", file_name="air.mp3", title="Things that fly")])
    put(db, "air", [segment(i, "Host", i * 10.0, i * 10.0 + 9, t, 15) for i, t in enumerate(texts)], embedder.embed(texts).vectors)
    query = "how did quetzalcoatlus fly"
    rare = 6
    vector = search(query, 3, mode="vector", settings=settings, db=db)
    text = search(query, 3, mode="text", settings=settings, db=db)
    hybrid = search(query, 3, mode="hybrid", settings=settings, db=db)
    assert rare not in [h.position for h in vector]
    assert [h.position for h in text] == [rare]  # the only chunk with a query term ('fly' is not 'flight')
    assert rare in [h.position for h in hybrid]
    for h in search(query, 10, mode="hybrid", settings=settings, db=db):
        expected = sum(1 / (RRF_K + r) for r in (h.vector_rank, h.text_rank) if r is not None)
        assert h.score == pytest.approx(expected) and h.rrf == h.score
    # The websearch syntax is kept when used: a quoted phrase must match as a phrase.
    assert search('"parking permits"', 3, mode="text", settings=settings, db=db)[0].position == rare
    assert search('"permits parking"', 3, mode="text", settings=settings, db=db) == []


def test_overlapping_context_windows_merge(db: Database, settings: Settings, embedder) -> None:
    filler = [
        "We start with the weather forecast for the weekend.", "Traffic on the ring road is heavy.",
        "The library reopens on Monday.", None, "A new bakery opened on the high street.", None,
        "The council voted on the parking charges.", "Schools break up next Friday.", None,
        "That is all for this week.", "Thanks for listening.", "See you next time.",
    ]
    volcano = {3: "The volcano erupted and lava poured down its flanks.",
               5: "Ash from the eruption of the volcano grounded flights.",
               8: "Volcanologists measure sulphur dioxide to predict an eruption."}
    texts = [volcano.get(i) or t for i, t in enumerate(filler)]
    episode_store.sync_catalogue(db, [CatalogueEntry(episode_id="news", file_name="news.mp3")])
    put(db, "news", [segment(i, "A" if i % 2 else "B", i * 10.0, i * 10.0 + 9, t, 10) for i, t in enumerate(texts)],
        embedder.embed(texts).vectors)
    plain = search("volcano eruption", 3, mode="vector", settings=settings, db=db)
    assert sorted(h.position for h in plain) == [3, 5, 8]
    merged = search("volcano eruption", 3, mode="vector", context=1, settings=settings, db=db)
    first = next(h for h in merged if 3 in h.matched_positions)
    assert set(first.matched_positions) == {3, 5} and first.positions == (2, 3, 4, 5, 6)
    assert first.score == max(h.score for h in plain if h.position in (3, 5))
    assert first.start == 20.0 and first.end == 69.0 and first.title == "news"
    assert first.speaker == ("A" if first.position % 2 else "B")
    assert any(h.matched_positions == (8,) and h.positions == (7, 8, 9) for h in merged)
    assert len(merged) == 3  # the merge frees a slot, filled by the next hit
    assert [h.rank for h in merged] == [1, 2, 3]
    assert merged[0].score >= merged[1].score >= merged[2].score


def test_empty_database_is_a_clear_error(db: Database, settings: Settings) -> None:
    for mode in Mode:
        with pytest.raises(SearchError, match="run `gdr ingest` first"):
            search("anything", mode=mode, settings=settings, db=db)
    result = CliRunner().invoke(app, ["search", "anything"], env={
        "DATABASE_URL": settings.external_database_url(), "GDR_HOME": str(settings.gdr_home)})
    assert result.exit_code == 1 and "no embeddings yet" in result.output


def test_openai_vectors_without_a_key_are_refused_clearly(db: Database, settings: Settings) -> None:
    episode_store.sync_catalogue(db, [CatalogueEntry(episode_id="o", file_name="o.mp3")])
    rng = np.random.default_rng(1)
    put(db, "o", [segment(0, "Host", 0.0, 5.0, "hello there", 2)], unit(rng.normal(size=(1, 1536))), model_id=OPENAI_MODEL)
    with pytest.raises(SearchError) as err:
        search("hello", settings=settings, db=db)
    assert str(err.value) == (
        f"the stored vectors were made with {OPENAI_MODEL}; set OPENAI_API_KEY to embed the query with the same "
        "model, or re-ingest with EMBEDDER=local (or search with --mode text)"
    )
    assert search("hello", mode="text", settings=settings, db=db)[0].text == "hello there"


def test_model_choice_prefers_the_settings_embedder_then_the_most_vectors(db: Database, settings: Settings, embedder) -> None:
    episode_store.sync_catalogue(db, [CatalogueEntry(episode_id=e, file_name=f"{e}.mp3") for e in ("a", "b")])
    rng = np.random.default_rng(2)
    segs = [segment(i, "Host", i * 5.0, i * 5.0 + 4, f"line {i}", 2) for i in range(3)]
    put(db, "a", segs, unit(rng.normal(size=(3, 1536))), model_id=OPENAI_MODEL)
    put(db, "b", segs, unit(rng.normal(size=(3, 1536))), model_id=OPENAI_MODEL)
    put(db, "a", segs, embedder.embed([s.text for s in segs]).vectors)
    openai_key = settings.model_copy(update={"openai_api_key": SecretStr("sk-test")})
    with db.connection() as conn:
        assert choose_model(conn, settings).model_id == LOCAL_MODEL  # EMBEDDER=auto without a key: local
        assert choose_model(conn, openai_key).model_id == OPENAI_MODEL  # with a key: OpenAI
        other = openai_key.model_copy(update={"embedder": "openai", "embedding_dimensions": 256})
        assert choose_model(conn, other).model_id == OPENAI_MODEL  # neither stored model is preferred: most vectors
        assert choose_model(conn, settings, LOCAL_MODEL).model_id == LOCAL_MODEL
    hits = search("line 1", 3, model_id=LOCAL_MODEL, settings=settings, db=db)
    assert hits.model_id == LOCAL_MODEL and {h.episode_id for h in hits} == {"a"}


def test_text_query_ors_rare_terms_and_ands_the_informative_common_ones() -> None:
    def stats(*freqs: tuple[str, float]) -> list[text_query.LexemeStats]:  # TEXT_STATS_SQL's rows at 100k chunks
        return [text_query.LexemeStats(lexeme, freq, 0.0001, 100_000.0) for lexeme, freq in freqs]

    # Within TEXT_ROW_BUDGET: the rare terms ORed, rarest first; the common one left out.
    assert text_query.plan_text_query(stats(("mite", 0.001), ("varroa", 0.0005), ("bee", 0.2))) == "'varroa' | 'mite'"
    # No term within it: ANDed, less a term found in most chunks (it would only drop chunks that lack it).
    assert text_query.plan_text_query(stats(("bee", 0.04), ("think", 0.87), ("hive", 0.03))) == "'bee' & 'hive'"
    assert text_query.plan_text_query(stats(("think", 0.87), ("know", 0.9))) == "'think' & 'know'"


def test_deep_link_forms() -> None:
    assert deep_link("https://x.org/e.mp3#old", "e.mp3", Path("/a"), 70.9) == "https://x.org/e.mp3#t=70"
    assert deep_link(None, "e.mp3", Path("/a"), 5.2) == "/a/e.mp3#t=5"
    assert deep_link(None, None, Path("/a"), 5.2) is None


# --- the second stage: replies first -----------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Mode))
def test_the_reply_to_a_matching_question_ranks_above_it(samples, mode) -> None:
    settings, db = samples
    asked, _ = script_turn(1, "Are the bees actually in trouble?")
    _, answer = script_turn(1, "Honeybees as a species are fine")
    first, second, *_ = search("Are the bees actually in trouble?", 3, mode=mode, settings=settings, db=db)
    assert (first.episode_id, first.position, first.reply_to.position) == ("1", asked + 1, asked), mode
    assert (first.start, first.end, first.speaker) == (answer["start"], answer["end"], answer["speaker_name"])
    assert (second.position, second.reply_to) == (asked, None)
    own_rank = (lambda h: h.text_rank) if mode is Mode.text else (lambda h: h.vector_rank)
    assert own_rank(second) == 1 and own_rank(first) != 1  # by their own scores the question came first
    assert first.relevance == second.relevance >= 0.5  # the reply is as relevant as the question that matched
    assert first.as_json()["reply_to"]["position"] == asked
    # Under a speaker filter the reply must be that speaker's: the host's question is not credited to the guest.
    host_only = search("Are the bees actually in trouble?", 3, mode=mode, speaker="Daniel", settings=settings, db=db)
    assert host_only[0].position == asked and {h.speaker for h in host_only} == {"Daniel Okafor"}


def test_gdr_search_shows_the_cited_reply_with_its_question_around_it(samples) -> None:
    settings, _ = samples
    _, question = script_turn(1, "Are the bees actually in trouble?")
    _, answer = script_turn(1, "Honeybees as a species are fine")
    result = run_cli(settings, "Are the bees actually in trouble?", "-k", "1")
    assert result.exit_code == 0, result.output
    cells = re.sub(r"[\s│]+", "", result.stdout)
    assert f"{format_time(answer['start'])}–{format_time(answer['end'])}" in cells  # the answer is what is cited
    assert f"GDR-001.mp3#t={math.floor(answer['start'])}" in cells
    assert re.sub(r"\s+", "", question["text"]) in cells  # and the question is shown as its context


# --- the exact scan, against a brute-force cosine ranking -------------------------------------------------


def brute_force(db: Database, settings: Settings, query: str, where: str, params: tuple) -> list[tuple[str, int, float]]:
    """(episode, position, cosine similarity) of every chunk passing `where`, best first, computed here with numpy
    over the stored vectors and the query embedding search uses."""
    with db.connection() as conn:
        rows = conn.execute("SELECT e.episode_id, e.position, e.embedding FROM embeddings e JOIN segments s "
                            f"USING (episode_id, position) WHERE e.model_id = %s AND {where}", (LOCAL_MODEL, *params)).fetchall()
        [model] = [m for m in engine.stored_models(conn) if m.model_id == LOCAL_MODEL]
    q = engine.query_embedder(model, settings).embed([query]).vectors[0].astype(np.float64)
    matrix = np.array([r[2].to_numpy() for r in rows], dtype=np.float64)
    cosine = matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
    order = np.argsort(-cosine, kind="stable")
    return [(rows[i][0], rows[i][1], float(cosine[i])) for i in order]


def assert_ranked_as(hits, oracle: list[tuple[str, int, float]], k: int) -> None:
    gaps = [a[2] - b[2] for a, b in zip(oracle[:k], oracle[1 : k + 1])]
    assert min(gaps) > 1e-6, gaps  # the oracle's order is not a float32 tie
    assert [(h.episode_id, h.position) for h in hits] == [(e, p) for e, p, _ in oracle[:k]]
    assert [h.score for h in hits] == pytest.approx([c for *_, c in oracle[:k]], abs=1e-5)


def test_a_selective_speaker_is_ranked_exactly_as_a_brute_force_cosine_ranks_it(synthetic) -> None:
    """At 2,000 chunks RARE's 40 are ranked by the exact scan from the start (no index in the plan)."""
    settings, db = synthetic
    query = "bees wintering in the hive"
    assert segment_store.index_name(LOCAL_MODEL) not in explain(query, 8, speaker=RARE, mode="vector", settings=settings,
                                                                db=db)
    hits = search(query, 8, speaker="rare voice", mode="vector", settings=settings, db=db)
    assert_ranked_as(hits, brute_force(db, settings, query, "s.speaker = %s", (RARE,)), 8)
    assert not hits.exact_fallback


def test_a_filter_passing_fewer_chunks_than_asked_is_rerun_exactly_as_a_brute_force_cosine_ranks_it(
        large_synthetic) -> None:
    """`since` the last week: one episode's 100 chunks among 50,000, 150 asked. The first statement comes back with
    fewer rows than asked (as a graph walk starved by a selective filter does), so the vector side is rerun as an
    exact scan over everything passing the filter; its ranking is a brute-force cosine ranking's."""
    settings, db = large_synthetic
    query = "the price of carbon emissions"
    last_week = date(2024, 1, 1) + timedelta(weeks=LARGE_EPISODES - 1)  # only the last episode is that recent
    hits = search(query, 150, since=last_week, mode="vector", settings=settings, db=db)
    assert hits.exact_fallback and len(hits) == SYNTH_CHUNKS
    assert_ranked_as(hits, brute_force(db, settings, query, "e.episode_id IN (SELECT episode_id FROM episodes "
                                       "WHERE published >= %s)", (last_week,)), SYNTH_CHUNKS)
    hits = search(query, 20, episode="S03", mode="vector", settings=settings, db=db)
    assert not hits.exact_fallback  # enough rows: no rerun
    assert_ranked_as(hits, brute_force(db, settings, query, "e.episode_id = %s", ("S03",)), 20)
