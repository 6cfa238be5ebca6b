"""Retrieval evaluation: does the top of the ranking hold the moment that answers the question?

    uv run python -m bench.retrieval_eval            # figures for BENCHMARKS.md
    uv run python -m bench.retrieval_eval --spans    # rewrite the answer spans in tests/retrieval_eval.json

The questions (tests/retrieval_eval.json) cover the four samples, the five-voice GDR-005 and the real Deepgram
phone call; each names a phrase of the answer, and its span is the ground-truth turn (samples) or Deepgram
utterance (phone call) holding that phrase. Transcripts are what users get: local Whisper base with the
offline diarizer for the synthetic episodes (cached under .gdr/bench-transcripts), Deepgram's for the call.
Rows: naive windows of 60, 120 and 250 words and the chunks (chunking.py, default settings), each embedded with
the offline MiniLM and ranked by in-memory cosine over the whole corpus (every episode at once); the chunks again
with search's second stage (search/replies.py) applied to that ranking; and the search itself: the same chunks
and vectors stored in an embedded Postgres + pgvector and queried through the library's `search()` (its default
mode, hybrid RRF then replies first, with the MiniLM query model). A hit is a result of the question's episode
whose time range overlaps the answer span. It also prints the mean chunk length on monologue-heavy talk.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMEmbedder
from gent_disagreement_rag.providers.registry import provider_registry
from gent_disagreement_rag.providers.transcribers.deepgram import parse_deepgram_response
from gent_disagreement_rag.search.replies import replies_first
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.search.types import Segment
from gent_disagreement_rag.text.chunking import Chunk, ChunkerConfig, chunk_transcript
from gent_disagreement_rag.transcript import Transcript

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "tests" / "retrieval_eval.json"
PHONE_CALL = ROOT / "tests" / "fixtures" / "deepgram" / "phone_call_463s_2spk_nova3_utterances.json"
SYNTHETIC = ("GDR-001", "GDR-002", "GDR-003", "GDR-004", "GDR-005")
WINDOWS = (60, 120, 250)
K = 5
RANDOM_QUESTIONS = 60


@dataclass(frozen=True)
class Unit:
    episode: str
    start: float
    end: float
    text: str


def _plain(text: str) -> str:
    return re.sub(r"[^\w$]+", " ", text.lower()).strip()


def ground_truth(episode: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of every turn (samples) or utterance (phone call)."""
    if episode == "phone_call":
        return [(u["start"], u["end"], u["transcript"]) for u in json.loads(PHONE_CALL.read_text())["results"]["utterances"]]
    turns = json.loads((ROOT / "data" / "samples" / f"{episode}.script.json").read_text())["turns"]
    return [(t["start"], t["end"], t["text"]) for t in turns]


def answer_span(question: dict) -> tuple[float, float]:
    """The span of the one turn or utterance containing the question's phrase (case and punctuation aside)."""
    phrase = _plain(question["expect_text"])
    spans = [(s, e) for s, e, text in ground_truth(question["episode"]) if phrase in _plain(text)]
    if len(spans) != 1:
        raise ValueError(f"question {question['id']}: {question['expect_text']!r} is in {len(spans)} turns, need 1")
    return spans[0]


def load_questions() -> list[dict]:
    return json.loads(QUESTIONS.read_text())


def transcripts(cache: Path) -> dict[str, tuple[Transcript, dict[str, str]]]:
    """Each episode's transcript and speakers_map; the synthetic ones transcribed once and cached."""
    from gent_disagreement_rag.providers.transcribers.local_whisper import LocalWhisperTranscriber, shipped_whisper_base

    out = {"phone_call": (parse_deepgram_response(json.loads(PHONE_CALL.read_text())), {})}
    cache.mkdir(parents=True, exist_ok=True)
    for stem in SYNTHETIC:
        speakers_map = json.loads((ROOT / "data" / "samples" / f"{stem}.script.json").read_text())["speakers_map"]
        path = cache / f"{stem}.raw.json"  # whisper's raw output: parsed again by today's rules on every run
        if not path.exists():
            whisper = LocalWhisperTranscriber(shipped_whisper_base(ROOT / ".gdr" / "models"), models=ROOT / ".gdr" / "models")
            result = whisper.transcribe(ROOT / "data" / "audio" / f"{stem}.mp3", speakers=len(speakers_map))
            path.write_text(json.dumps(result.raw))
        out[stem] = (provider_registry(Settings(_env_file=None)).parse_raw(json.loads(path.read_text())), speakers_map)
    return out


def windows(episode: str, transcript: Transcript, size: int) -> list[Unit]:
    words = transcript.words
    return [Unit(episode, words[i].start, words[min(i + size, len(words)) - 1].end,
                 " ".join(w.display for w in words[i : i + size])) for i in range(0, len(words), size)]


def chunks(corpus: dict[str, tuple[Transcript, dict[str, str]]]) -> tuple[list[Unit], list[Chunk]]:
    """Every episode's chunks (chunking.py, default settings) as units, and the chunks themselves."""
    pairs = [(Unit(ep, c.start, c.end, c.text), c) for ep, (t, m) in corpus.items() for c in chunk_transcript(t, m)]
    return [u for u, _ in pairs], [c for _, c in pairs]


def monologue_seconds(config: ChunkerConfig) -> float:
    """Mean chunk length on monologue-heavy talk: the phone call's words as if one person said them all."""
    from dataclasses import replace

    call = parse_deepgram_response(json.loads(PHONE_CALL.read_text()))
    one_voice = replace(call, words=[replace(w, speaker=0) for w in call.words])
    return float(np.mean([c.end - c.start for c in chunk_transcript(one_voice, config=config)]))


def first_hit(results: Sequence[Unit], question: dict) -> int | None:
    """1-based rank of the first result overlapping the answer span in the question's episode."""
    start, end = (question["start"], question["end"]) if "start" in question else answer_span(question)
    return next((r for r, u in enumerate(results, 1) if u.episode == question["episode"]
                 and u.start < end and u.end > start), None)


def cosine_ranks(units: Sequence[Unit], questions: Sequence[dict], embedder: LocalMiniLMEmbedder, *,
                 replies: Sequence[Chunk] | None = None) -> list[int | None]:
    """Ranks by in-memory cosine; with `replies` (the units' chunks), reordered by search's second stage."""
    vectors = embedder.embed([u.text for u in units]).vectors
    queries = embedder.embed([q["question"] for q in questions]).vectors
    index = {(u.episode, c.position): i for i, (u, c) in enumerate(zip(units, replies or (), strict=False))}
    ranks = []
    for q, query in zip(questions, queries, strict=True):
        order = [int(i) for i in np.argsort(-(vectors @ query))]
        if replies is not None:
            def chunk(episode: str, position: int) -> Segment | None:
                i = index.get((episode, position))
                return None if i is None else Segment(position, replies[i].speaker, 0.0, 0.0, replies[i].text)
            ranked = replies_first([(units[i].episode, replies[i].position) for i in order], chunk)
            order = [index[(r.episode_id, r.position)] for r in ranked]
        ranks.append(first_hit([units[i] for i in order[:K]], q))
    return ranks


def search_ranks(corpus: dict[str, tuple[Transcript, dict[str, str]]], questions: Sequence[dict],
                 embedder: LocalMiniLMEmbedder) -> tuple[list[int | None], list[Unit]]:
    """Ranks from the library's search over today's chunks, stored as ingestion stores them."""
    from bench.harness import embedded_postgres
    from gent_disagreement_rag.search import search
    from gent_disagreement_rag.settings import Settings
    from gent_disagreement_rag.sources.catalogue import CatalogueEntry
    from gent_disagreement_rag.storage import episodes as episode_store
    from gent_disagreement_rag.storage import segments as segment_store
    from gent_disagreement_rag.storage.database import Database

    units: list[Unit] = []
    with embedded_postgres() as pg:
        url = pg.create_database("eval")
        settings = Settings(_env_file=None, database_url=url, embedder="local", gdr_home=ROOT / ".gdr")
        with Database(url, max_size=2) as db:
            db.open()
            episode_store.sync_catalogue(db, [CatalogueEntry(episode_id=ep, title=ep) for ep in corpus])
            for ep, (transcript, speakers_map) in corpus.items():
                episode_chunks = chunk_transcript(transcript, speakers_map)
                units += [Unit(ep, c.start, c.end, c.text) for c in episode_chunks]
                segment_store.store_episode(db, ep, episode_chunks, model_id=embedder.model_id, provider=embedder.provider,
                                    model=embedder.model, vectors=embedder.embed([c.text for c in episode_chunks]).vectors)
            ranks = []
            for q in questions:
                hits = search(q["question"], K, settings=settings, db=db)
                ranks.append(first_hit([Unit(h.episode_id, h.start, h.end, h.text) for h in hits], q))
        pg.drop_database(url)
    return ranks, units


def random_questions(seed: int, count: int = RANDOM_QUESTIONS) -> list[dict]:
    """Questions drawn by a seeded generator instead of written by us: a random turn (or utterance) of a random
    episode, asked as 3 of its words of 4 letters or more in random order; its span is the answer. A check that
    a ranking change is not fitted to the written questions."""
    rng = random.Random(seed)
    episodes = [*SYNTHETIC, "phone_call"]
    questions: list[dict] = []
    while len(questions) < count:
        episode = rng.choice(episodes)
        start, end, text = rng.choice(ground_truth(episode))
        words = sorted({w for w in re.findall(r"[a-z']+", text.lower()) if len(w) >= 4})
        if len(words) >= 3:
            questions.append({"id": f"random-{seed}-{len(questions)}", "episode": episode, "start": start, "end": end,
                              "question": " ".join(rng.sample(words, 3))})
    return questions


def metrics(ranks: Sequence[int | None], units: Sequence[Unit]) -> dict[str, float]:
    """hit@1, hit@3, MRR@5, and the units' mean length in seconds."""
    return {
        "hit@1": sum(r == 1 for r in ranks) / len(ranks),
        "hit@3": sum(r is not None and r <= 3 for r in ranks) / len(ranks),
        "mrr@5": sum(1 / r for r in ranks if r) / len(ranks),
        "mean_seconds": float(np.mean([u.end - u.start for u in units])),
        "units": len(units),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", action="store_true", help="rewrite the answer spans in the questions file")
    parser.add_argument("--random", type=int, metavar="SEED",
                        help=f"{RANDOM_QUESTIONS} questions drawn by a generator seeded with SEED instead of the written ones")
    args = parser.parse_args()
    questions = load_questions() if args.random is None else random_questions(args.random)
    if args.spans:
        for q in questions:
            q["start"], q["end"] = answer_span(q)
        QUESTIONS.write_text(json.dumps(questions, indent=2) + "\n")
        return
    corpus = transcripts(ROOT / ".gdr" / "bench-transcripts")
    embedder = LocalMiniLMEmbedder()
    rows = {f"naive {n} words": [u for ep, (t, _) in corpus.items() for u in windows(ep, t, n)] for n in WINDOWS}
    results = {name: metrics(cosine_ranks(units, questions, embedder), units) for name, units in rows.items()}
    units, chunk_list = chunks(corpus)
    results["chunks, cosine"] = metrics(cosine_ranks(units, questions, embedder), units)
    results["chunks, cosine, replies first"] = metrics(cosine_ranks(units, questions, embedder, replies=chunk_list), units)
    results["search() over Postgres (hybrid, replies first)"] = metrics(*search_ranks(corpus, questions, embedder))
    episodes = sorted({q["episode"] for q in questions})
    print(f"{len(questions)} questions over {len(episodes)} episodes ({', '.join(episodes)})")
    print("| units | hit@1 | hit@3 | MRR@5 | mean unit (s) | units |")
    print("| --- | --- | --- | --- | --- | --- |")
    n = len(questions)
    for name, m in results.items():
        print(f"| {name} | {m['hit@1']:.3f} ({round(m['hit@1'] * n)}) | {m['hit@3']:.3f} ({round(m['hit@3'] * n)}) "
              f"| {m['mrr@5']:.3f} | {m['mean_seconds']:.1f} | {m['units']} |")
    uncapped = monologue_seconds(ChunkerConfig(max_seconds=float("inf")))
    print(f"\nMonologue (the phone call's words as one speaker): mean chunk {uncapped:.1f} s without the seconds cap, "
          f"{monologue_seconds(ChunkerConfig()):.1f} s with CHUNK_MAX_SECONDS={ChunkerConfig().max_seconds:g}")


if __name__ == "__main__":
    main()
