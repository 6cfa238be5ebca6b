"""Diarization on voices nobody picked: episodes drawn at random from espeak-ng's space of voices.

    uv run python -m bench.speaker_draws                      # seeds 1 (tuned on) and 2 (never looked at while tuning)
    uv run python -m bench.speaker_draws --seed 7 --episodes 5

Every episode is drawn from a seeded generator: 2 to 6 speakers, each an espeak-ng accent x variant x pitch x
speed; turns from one word to two minutes, with interruptions (the next speaker starts before the last one
stops, their audio overlapping) and back-channels ("yeah", "right") from a listener. Whisper is skipped: the
script knows every turn's speaker and where its speech is, so the diarizers get the stretches of speech a
transcriber's phrases would be (each turn split at its pauses) and label them. Score: the share of speech time
labelled right under the best one-to-one mapping of labels to speakers (an assignment over subsets). The
figures are the median, 10th percentile and worst episode of a draw; targets median >= 95%, p10 >= 85%, none
below 60%. Speaker count: given (the episode's speakers_map names them all), and estimated (no map), where the
estimate's error is reported too. Cost: CPU seconds (all threads) per second of audio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16_000
GENERATOR_VERSION = 1  # bump when a draw changes for the same seed (the synthesised audio is cached by it)
CACHE = Path(tempfile.gettempdir()) / "gdr-speaker-draws"

# espeak-ng's English accents that take a +variant (en-gb silently ignores it; "en" is the same British voice
# with the variant applied) and its voice variants, less the two whispers: a whisper has no pitch nor timbre a
# podcast guest would have.
ACCENTS = ("en", "en-us", "en-us-nyc", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029")
VARIANTS = (
    "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty", "belinda", "benjamin", "boris", "caleb",
    "david", "Demonic", "Denis", "Diogo", "ed", "edward", "edward2", "Gene", "Gene2", "gustave", "announcer", "Henrique",
    "Hugo", "iven", "iven2", "iven3", "iven4", "Jacky", "john", "kaukovalta", "Lee", "linda", "marcelo", "Marco",
    "Mario", "max", "Michael", "michel", "miguel", "Mike", "Mr", "Nguyen", "pablo", "paul", "pedro", "quincy",
    "RicishayMax", "RicishayMax2", "RicishayMax3", "rob", "robert", "robosoft", "robosoft2", "robosoft3", "robosoft4",
    "robosoft5", "robosoft6", "robosoft7", "robosoft8", "steph", "steph2", "steph3", "Storm", "Tweaky", "UniRobot",
    "zac", "anika", "anikaRobot", "AnxiousAndy", "fast", "f1", "f2", "f3", "f4", "f5", "grandpa", "klatt", "klatt2",
    "klatt3", "klatt4", "klatt5", "klatt6", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "norbert", "sandro",
    "shelby", "travis", "victor", "croak", "grandma",
)
PITCH = (15, 85)  # espeak-ng -p (0-99, default 50)
SPEED = (130, 200)  # words per minute
BACK_CHANNELS = ("yeah", "right", "mm hm", "sure", "exactly", "okay", "yes", "true", "wow", "no")
BACK_CHANNEL_SHARE = 0.2  # of turns
INTERRUPTION_SHARE = 0.2  # of turn changes: the next voice starts up to 0.6 s before the last one ends
GAP = (0.15, 0.8)  # silence between turns otherwise, seconds
MAX_TURN_WORDS = 330  # about two minutes of espeak-ng speech
DURATION = (30.0, 90.0)  # an episode's length is drawn from this range (short: a draw of 30 runs in minutes on 2 busy cores)
PHRASE_PAUSE = 0.25  # a turn's silences at least this long split it into phrases (as a transcriber's phrases)
TARGETS = {"median": 0.95, "p10": 0.85, "worst": 0.60}
KNOWN_PROBES = 8  # enrolled episodes whose voices speak again (the library's known voices)
PITCH_AGREE_SWEEP = (1.0, 1.5, 2.0, 3.0, float("inf"))  # semitones; inf: cosine alone
BEFORE = (0.85, float("inf"))  # the library's rule before the pitch gate: cosine alone, at 0.85


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str
    pitch: int
    speed: int

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant} p{self.pitch} s{self.speed}"


@dataclass
class Episode:
    seed: int
    index: int
    voices: list[Voice]
    audio: np.ndarray  # float32, 16 kHz
    spans: list[tuple[float, float]]  # stretches of speech, as a transcriber's phrases
    speakers: list[int]  # the true speaker of each span, numbered by first appearance

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def _sentences() -> list[str]:
    """The sample scripts' sentences (espeak-ng's spoken form): the words every draw's turns are cut from."""
    out = []
    for path in sorted((ROOT / "data" / "samples").glob("*.script.json")):
        for turn in json.loads(path.read_text())["turns"]:
            out.extend(s.strip() + "." for s in turn["spoken"].replace("?", ".").replace("!", ".").split(".") if s.strip())
    return out


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    """`x` at `rate` to SAMPLE_RATE by cutting its spectrum (no scipy here)."""
    n = int(round(len(x) * SAMPLE_RATE / rate))
    spectrum = np.fft.rfft(x)[: n // 2 + 1]
    return (np.fft.irfft(spectrum, n) * (n / len(x))).astype(np.float32)


def synthesise(text: str, voice: Voice) -> np.ndarray:
    """One turn as float32 16 kHz samples, trimmed to its speech and peak-normalised to 0.8."""
    wav = subprocess.run(["espeak-ng", "-v", f"{voice.accent}+{voice.variant}", "-p", str(voice.pitch), "-s", str(voice.speed),
                          "--stdout", "--stdin"], input=text.encode(), capture_output=True, check=True).stdout
    # espeak-ng's --stdout WAV: a 44-byte header, 16-bit mono at 22,050 Hz
    rate = int.from_bytes(wav[24:28], "little")
    x = _resample(np.frombuffer(wav[44:], dtype="<i2").astype(np.float32) / 32768, rate)
    loud = np.flatnonzero(np.abs(x) > 0.006)
    if not len(loud):
        return np.zeros(0, np.float32)
    x = x[max(0, loud[0] - 320) : loud[-1] + 320]
    return 0.8 * x / np.abs(x).max()


def phrases(x: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) samples of `x`'s stretches of speech between pauses of at least PHRASE_PAUSE (10 ms frames)."""
    hop = SAMPLE_RATE // 100
    frames = len(x) // hop
    if not frames:
        return []
    loud = np.abs(x[: frames * hop]).reshape(frames, hop).max(axis=1) > 0.01
    out, start, quiet = [], None, 0
    for i, on in enumerate(loud):
        if on:
            if start is None:
                start = i
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet * hop >= PHRASE_PAUSE * SAMPLE_RATE:
                out.append((start * hop, (i - quiet + 1) * hop))
                start, quiet = None, 0
    if start is not None:
        out.append((start * hop, (frames - quiet) * hop))
    return out


def draw_voice(rng: random.Random) -> Voice:
    return Voice(rng.choice(ACCENTS), rng.choice(VARIANTS), rng.randint(*PITCH), rng.randint(*SPEED))


def _script(rng: random.Random, count: int, sentences: list[str], seconds: float) -> list[tuple[int, str, float]]:
    """(speaker, text, gap before) turns adding up to about `seconds` of speech (at ~2.7 words a second)."""
    turns: list[tuple[int, str, float]] = []
    words_left = int(seconds * 2.7)
    speaker = 0
    seen = 1
    while words_left > 0:
        if turns:
            # a new voice joins while there are voices not yet heard, else anyone but the current speaker
            others = [s for s in range(min(seen + 1, count)) if s != speaker]
            speaker = others[-1] if seen < count and rng.random() < 0.5 else rng.choice(others)
            seen = max(seen, speaker + 1)
        if turns and rng.random() < BACK_CHANNEL_SHARE:
            text = rng.choice(BACK_CHANNELS)
        else:  # log-uniform from one word to two minutes
            words = min(words_left, int(round(np.exp(rng.uniform(0, np.log(MAX_TURN_WORDS))))))
            start = rng.randrange(len(sentences))
            text = " ".join(" ".join(sentences[(start + i) % len(sentences)] for i in range(60)).split()[: max(1, words)])
        gap = -rng.uniform(0.1, 0.6) if turns and rng.random() < INTERRUPTION_SHARE else rng.uniform(*GAP)
        turns.append((speaker, text, gap))
        words_left -= len(text.split())
    if seen < count:  # every drawn voice speaks
        for s in range(seen, count):
            turns.append((s, " ".join(rng.choice(sentences) for _ in range(2)), rng.uniform(*GAP)))
    return turns


def draw(seed: int, index: int, take: int = 0, duration: tuple[float, float] = DURATION) -> Episode:
    """Episode `index` of draw `seed` (cached under the temp folder: synthesis is the slow part). `take` > 0: the
    same voices in another conversation (the voice library's known voices in a later episode)."""
    rng = random.Random(f"gdr-speaker-draws:{seed}:{index}")
    count = rng.randint(2, 6)
    voices: list[Voice] = []
    while len(voices) < count:
        voice = draw_voice(rng)
        if voice not in voices:
            voices.append(voice)
    if take:
        rng = random.Random(f"gdr-speaker-draws:{seed}:{index}:take{take}")
    turns = _script(rng, count, _sentences(), rng.uniform(*duration))
    key = hashlib.sha256(repr((GENERATOR_VERSION, voices, turns)).encode()).hexdigest()[:16]
    cached = CACHE / f"{seed}-{index}-{key}.npz"
    if cached.exists():
        data = np.load(cached)
        spans = [tuple(s) for s in data["spans"].tolist()]
        return Episode(seed, index, voices, data["audio"], spans, data["speakers"].tolist())
    pieces = [(speaker, synthesise(text, voices[speaker]), gap) for speaker, text, gap in turns]
    pieces = [p for p in pieces if len(p[1])]
    starts, position = [], int(0.5 * SAMPLE_RATE)
    for i, (_, samples, gap) in enumerate(pieces):
        if i:
            # an interruption overlaps at most half of either turn
            overlap = min(-gap * SAMPLE_RATE, len(samples) / 2, len(pieces[i - 1][1]) / 2) if gap < 0 else -gap * SAMPLE_RATE
            position = int(max(starts[-1], starts[-1] + len(pieces[i - 1][1]) - overlap))
        starts.append(position)
    audio = np.zeros(starts[-1] + len(pieces[-1][1]) + SAMPLE_RATE // 2, np.float32)
    spans, speakers = [], []
    for start, (speaker, samples, _) in zip(starts, pieces, strict=True):
        audio[start : start + len(samples)] += samples
        for a, b in phrases(samples):
            spans.append(((start + a) / SAMPLE_RATE, (start + b) / SAMPLE_RATE))
            speakers.append(speaker)
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    spans, speakers = [spans[i] for i in order], [speakers[i] for i in order]
    first = list(dict.fromkeys(speakers))  # renumber by first appearance, like a speakers_map
    speakers = [first.index(s) for s in speakers]
    voices = [voices[s] for s in first]
    audio = np.clip(audio, -1, 1)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cached, audio=audio, spans=np.array(spans), speakers=np.array(speakers))
    return Episode(seed, index, voices, audio, spans, speakers)


def accuracy(spans: list[tuple[float, float]], labels: list[int], truth: list[int]) -> float:
    """Share of the spans' time whose label, mapped one-to-one onto the true speakers as best it can be, is right.
    The best mapping by dynamic programming over subsets of true speakers (labels and speakers stay below ~12)."""
    n_labels, n_true = max(labels) + 1, max(truth) + 1
    overlap = np.zeros((n_labels, n_true))
    for (start, end), label, speaker in zip(spans, labels, truth, strict=True):
        overlap[label, speaker] += end - start
    best = {0: 0.0}  # subset of true speakers taken -> best time so far
    for row in overlap:
        nxt = dict(best)  # this label left unmapped
        for taken, score in best.items():
            for s in range(n_true):
                if not taken >> s & 1:
                    key = taken | 1 << s
                    nxt[key] = max(nxt.get(key, 0.0), score + row[s])
        best = nxt
    return float(max(best.values()) / overlap.sum())


def summary(scores: list[float]) -> dict[str, float]:
    ordered = sorted(scores)
    p10 = float(np.percentile(ordered, 10, method="lower")) if ordered else float("nan")
    return {"median": statistics.median(ordered), "p10": p10, "worst": ordered[0], "episodes": len(ordered)}


Diarizer = Callable[[np.ndarray, int, list[tuple[float, float]], int | None], list[int]]


def diarizers(home: Path) -> dict[str, Diarizer]:
    """The alternatives compared: `speakers` is the count when a map gives it, None when it must be estimated."""
    from gent_disagreement_rag.providers.transcribers import diarize, speaker_embeddings, voices
    from gent_disagreement_rag.providers.transcribers.local_whisper import diarize_spans

    session = speaker_embeddings.load_session(home)
    return {
        "pitch": lambda audio, sr, spans, speakers: diarize.assign_speakers(audio, sr, spans, speakers or 6),
        "ecapa": lambda audio, sr, spans, speakers: (
            speaker_embeddings.assign_speakers(audio, sr, spans, speakers, lambda: session) if speakers
            else diarize.assign_speakers(audio, sr, spans, 4)),  # today's transcriber without a map: pitch, up to 4
        # What the local transcriber runs (local_whisper.diarize_spans): ECAPA in pitch groups with a count,
        # voices.py without one.
        "shipped": lambda audio, sr, spans, speakers: SimpleNamespace(
            labels=diarize_spans(audio, spans, speakers, lambda: session)),
    }


def run_draw(seed: int, episodes: int, methods: dict[str, Diarizer], rounds_log: Callable[[str], None] = print,
             partial: Path | None = None, session: Any = None) -> dict:
    """Every method on every episode of the draw, methods alternating within each episode (A B C A B C ...).
    The shipped diarizer's voices are kept for the library's figures, and the first KNOWN_PROBES episodes' voices are
    heard again in another conversation (take 1, no count). With `partial`, what is done so far is written there
    after every episode (figures can be made from it: `--record`)."""
    raw: dict = {"seed": seed, "episodes_wanted": episodes, "audio_seconds": 0.0, "methods": {
        m: {"given": [], "estimated": [], "count_error": [], "cpu": []} for m in methods}, "voices": [], "again": []}
    per_method = raw["methods"]
    for index in range(episodes):
        episode = draw(seed, index)
        raw["audio_seconds"] += episode.seconds
        count = len(episode.voices)
        voices_of: dict[str, dict] = {}
        for mode in ("given", "estimated"):
            for name, method in methods.items():
                started = time.process_time()
                labels = method(episode.audio, SAMPLE_RATE, episode.spans, count if mode == "given" else None)
                per_method[name]["cpu"].append((time.process_time() - started) / episode.seconds)
                if not isinstance(labels, list):  # the shipped diarizer: its voices serve the library's figures
                    voices_of[mode] = _voices(episode, labels, session)
                    labels = labels.labels
                per_method[name][mode].append(accuracy(episode.spans, labels, episode.speakers))
                if mode == "estimated":
                    per_method[name]["count_error"].append(len(set(labels)) - count)
        raw["voices"].append(voices_of)
        if "shipped" in methods and index < KNOWN_PROBES:
            again = draw(seed, index, take=1)
            raw["again"].append(_voices(again, methods["shipped"](again.audio, SAMPLE_RATE, again.spans, None), session))
        rounds_log(f"seed {seed} episode {index}: {count} voices, {episode.seconds:.0f} s, {len(episode.spans)} phrases; "
                   + "; ".join(f"{m} {r['given'][-1]:.0%}/{r['estimated'][-1]:.0%} ({r['count_error'][-1]:+d})"
                               for m, r in per_method.items()))
        if partial is not None:
            partial.write_text(json.dumps(raw))
    return figures(raw)


def _voices(episode: Episode, result, session) -> dict:
    """A diarization's voices as the product's voices stage makes them (voices.speaker_voices over the labelled
    stretches): each voice's true speaker (by most speech time), embedding and median pitch."""
    from gent_disagreement_rag.providers.transcribers import voices

    truth_of = _majority(result.labels, episode.speakers, episode.spans)
    found = voices.speaker_voices(episode.audio, episode.spans, result.labels, lambda: session)
    return {"names": [episode.voices[truth_of[v.speaker]].name for v in found],
            "embeddings": [[round(float(x), 5) for x in v.embedding] for v in found],
            "pitches": [None if v.pitch is None else round(v.pitch, 3) for v in found]}


def figures(raw: dict) -> dict:
    """The draw's figures from what run_draw recorded (all of it, or the episodes done so far)."""
    done = len(raw["voices"])
    out = {"seed": raw["seed"], "episodes": done, "episodes_wanted": raw["episodes_wanted"],
           "audio_seconds": round(raw["audio_seconds"], 1), "methods": {}}
    for name, r in raw["methods"].items():
        errors = r["count_error"][:done]
        out["methods"][name] = {
            "given": summary(r["given"][:done]), "estimated": summary(r["estimated"][:done]),
            "count_exact": sum(e == 0 for e in errors) / len(errors),
            "count_mean_abs_error": statistics.mean(abs(e) for e in errors),
            "cpu_per_audio_second": round(statistics.median(r["cpu"]), 4),
            "scores_given": [round(s, 4) for s in r["given"][:done]],
        }
    if raw["voices"] and "given" in raw["voices"][0]:
        out["library"] = library_figures(raw)
    return out


def library_figures(raw: dict) -> dict:
    """The voice library on a draw, from the shipped diarizer's voices: the first K episodes are named (count given;
    each voice enrolled under its true name), K = KNOWN_PROBES or half the episodes done; their voices heard again
    in another conversation without a count are the known voices (named right, wrong, or not at all); the voices
    of the episodes after them were never enrolled (unknown: any name is a false name)."""
    from gent_disagreement_rag.providers.transcribers import voices

    k = min(KNOWN_PROBES, len(raw["voices"]) // 2, len(raw["again"]))
    library: dict[str, list[tuple[list[float], float | None]]] = {}
    for heard in raw["voices"][:k]:
        given = heard["given"]
        for name, embedding, pitch in zip(given["names"], given["embeddings"], given["pitches"], strict=True):
            library.setdefault(name, []).append((embedding, pitch))
    known_voices = {name: voices.KnownVoice(np.array([e for e, _ in samples], dtype=np.float32),
                                            np.array([np.nan if p is None else p for _, p in samples]))
                    for name, samples in library.items()}

    def heard_voice(embedding: list[float], pitch: float | None) -> voices.SpeakerVoice:
        return voices.SpeakerVoice(0, np.array(embedding, dtype=np.float32), 0.0, pitch)

    unknown = [heard_voice(e, p) for heard in raw["voices"][k:]
               for e, p in zip(heard["estimated"]["embeddings"], heard["estimated"]["pitches"], strict=True)]
    known = [(heard_voice(e, p), name) for heard in raw["again"][:k]
             for name, e, p in zip(heard["names"], heard["embeddings"], heard["pitches"], strict=True)]

    def best(voice: voices.SpeakerVoice, pitch_agree: float) -> tuple[float, str]:
        return max((voices.likeness(voice, kv, pitch_agree), name) for name, kv in known_voices.items())

    def at(threshold: float, pitch_agree: float) -> dict[str, float]:
        found = [(best(v, pitch_agree), name) for v, name in known]
        return {"threshold": round(threshold, 3), "pitch_agree": pitch_agree,
                "known_named_right": sum(s >= threshold and f == name for (s, f), name in found) / max(1, len(found)),
                "known_named_wrong": sum(s >= threshold and f != name for (s, f), name in found) / max(1, len(found)),
                "unknown_false_name": sum(best(v, pitch_agree)[0] >= threshold for v in unknown) / max(1, len(unknown))}

    sweep = [at(t, a) for a in PITCH_AGREE_SWEEP for t in np.arange(0.6, 0.96, 0.025).tolist()]
    return {"enrolled_voices": len(known_voices), "known_speakers": len(known), "unknown_speakers": len(unknown),
            "shipped": at(voices.SAME_PERSON, voices.PITCH_AGREE), "before": at(*BEFORE), "sweep": sweep}


def _majority(labels: list[int], truth: list[int], spans: list[tuple[float, float]]) -> dict[int, int]:
    """Each label's true speaker: the one with most of its speech time."""
    time_of: dict[tuple[int, int], float] = {}
    for (start, end), label, speaker in zip(spans, labels, truth, strict=True):
        time_of[label, speaker] = time_of.get((label, speaker), 0.0) + end - start
    return {label: max((t, s) for (lab, s), t in time_of.items() if lab == label)[1] for label in set(labels)}


def run(*, quick: bool = False) -> dict:
    """bench/run_all.py's section: both seeds, every method, the load beside each draw."""
    from bench.harness import load, log

    from gent_disagreement_rag.providers.transcribers import speaker_embeddings

    home = Path(tempfile.mkdtemp(prefix="gdr-speaker-draws-"))
    methods = diarizers(home)
    session = speaker_embeddings.load_session(home)
    out = {"targets": TARGETS, "draws": []}
    for seed, role in ((1, "tuned on"), (2, "unseen while tuning")):
        result = run_draw(seed, 5 if quick else 30, methods, log, session=session)
        result |= {"role": role, "load": load()}
        out["draws"].append(result)

    return out


def record(draws: list[dict]) -> None:
    """The speakers section of bench/results.json from draws run apart (run_draw's `partial` files), then
    BENCHMARKS.md from all results."""
    from bench.report import write_chart, write_report
    from bench.run_all import CHART, REPORT, RESULTS

    from bench.harness import load

    made = [figures(raw) | {"role": "tuned on" if raw["seed"] == 1 else "unseen while tuning", "load": load()}
            for raw in draws]
    results = json.loads(RESULTS.read_text())
    results["sections"]["speakers"] = {"targets": TARGETS, "draws": sorted(made, key=lambda d: d["seed"]),
                                       "_meta": {"when": time.strftime("%Y-%m-%d %H:%M"), "quick": False}}
    RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_chart(results, CHART)
    write_report(results, REPORT, CHART)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, action="append", help="draw seed (repeatable; default 1 and 2)")
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--only", action="append", help="method (pitch, ecapa, shipped)")
    parser.add_argument("--json", type=Path, help="write each draw's progress here after every episode (SEED: the seed)")
    parser.add_argument("--record", type=Path, nargs="+", help="put these draws' JSON into bench/results.json as the "
                        "speakers section and rewrite BENCHMARKS.md (draws run as separate processes)")
    args = parser.parse_args()
    if args.record:
        record([json.loads(p.read_text()) for p in args.record])
        return
    from gent_disagreement_rag.providers.transcribers import speaker_embeddings

    home = Path(tempfile.mkdtemp(prefix="gdr-speaker-draws-"))
    methods = diarizers(home)
    session = speaker_embeddings.load_session(home)
    if args.only:
        methods = {k: v for k, v in methods.items() if k in args.only}
    for seed in args.seed or [1, 2]:
        partial = Path(str(args.json).replace("SEED", str(seed))) if args.json else None
        result = run_draw(seed, args.episodes, methods, partial=partial, session=session)
        for name, m in result["methods"].items():
            g, e = m["given"], m["estimated"]
            print(f"seed {seed} {name}: given median {g['median']:.1%} p10 {g['p10']:.1%} worst {g['worst']:.1%} | "
                  f"estimated median {e['median']:.1%} p10 {e['p10']:.1%} worst {e['worst']:.1%}, count exact "
                  f"{m['count_exact']:.0%} (mean |error| {m['count_mean_abs_error']:.2f}) | "
                  f"{m['cpu_per_audio_second']:.4f} CPU s per audio s")
        if lib := result.get("library"):
            print(json.dumps({k: v for k, v in lib.items() if k != "sweep"}, default=str))
            for row in lib["sweep"]:
                print(row)


if __name__ == "__main__":
    main()
