"""Speaker accuracy of the offline transcriber on the synthetic episodes: the pitch diarizer alone vs ECAPA-TDNN.

    uv run python -m bench.speaker_accuracy

Accuracy = the share of speech time (word durations) labelled with the right speaker, after mapping the
diarizer's speakers to the script's one-to-one in the way that scores best (the Hungarian assignment,
here by trying every permutation: at most a handful of speakers). Whisper runs once per episode; both
diarizers then label the same phrases, in alternating rounds for the timings.
"""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from itertools import permutations
from pathlib import Path

import numpy as np

from gent_disagreement_rag.providers.transcribers import diarize, speaker_embeddings
from gent_disagreement_rag.providers.transcribers.local_whisper import (
    SAMPLE_RATE,
    LocalWhisperTranscriber,
    _phrases,
    decode,
    shipped_whisper_base,
)

ROOT = Path(__file__).resolve().parents[1]
EPISODES = ("GDR-001", "GDR-002", "GDR-003", "GDR-004", "GDR-005")
ROUNDS = 3


def script(stem: str) -> dict:
    return json.loads((ROOT / "data" / "samples" / f"{stem}.script.json").read_text())


def speaker_accuracy(spans: list[tuple[float, float]], labels: list[int], turns: list[dict]) -> float:
    """Share of the spans' time whose label, mapped optimally one-to-one onto the turns' speakers, is right."""
    size = max(max(labels) + 1, max(t["speaker"] for t in turns) + 1)
    overlap = np.zeros((size, size))
    for (start, end), label in zip(spans, labels, strict=True):
        for turn in turns:
            overlap[label, turn["speaker"]] += max(0.0, min(end, turn["end"]) - max(start, turn["start"]))
    best = max(overlap[range(size), list(perm)].sum() for perm in permutations(range(size)))
    return float(best / overlap.sum())


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="gdr-speakers-"))
    whisper = LocalWhisperTranscriber(shipped_whisper_base(ROOT / ".gdr" / "models"), diarize=False, models=home)
    started = time.perf_counter()
    session = speaker_embeddings.load_session(home)
    print(f"ECAPA ONNX model built from the shipped checkpoint in {time.perf_counter() - started:.2f} s")
    rows = []
    for stem in EPISODES:
        audio = decode(ROOT / "data" / "audio" / f"{stem}.mp3")
        words = [w for s in whisper._whisper(audio, None)[0] for w in s["words"]]
        spans = [(words[a]["start"], words[b]["end"]) for a, b in _phrases(words)]
        meta = script(stem)
        names = len(meta["speakers_map"])
        timings: dict[str, list[float]] = {"pitch": [], "ecapa": []}
        for _ in range(ROUNDS):
            for name in timings:  # alternating rounds: pitch, ecapa, pitch, ecapa, ...
                started = time.perf_counter()
                if name == "pitch":
                    labels = diarize.assign_speakers(audio, SAMPLE_RATE, spans, names)
                    pitch = labels
                else:
                    labels = speaker_embeddings.assign_speakers(audio, SAMPLE_RATE, spans, names, lambda: session)
                    ecapa = labels
                timings[name].append(time.perf_counter() - started)
        seconds = len(audio) / SAMPLE_RATE
        rows.append((stem, names, speaker_accuracy(spans, pitch, meta["turns"]), max(pitch) + 1,
                     speaker_accuracy(spans, ecapa, meta["turns"]), max(ecapa) + 1,
                     seconds / statistics.median(timings["pitch"]), seconds / statistics.median(timings["ecapa"])))
    print("| episode | voices | pitch: accuracy (speakers found) | ECAPA+pitch: accuracy (speakers found) "
          "| pitch x real time | ECAPA+pitch x real time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for stem, names, pa, pk, ea, ek, px, ex in rows:
        print(f"| {stem} | {names} | {pa:.1%} ({pk}) | {ea:.1%} ({ek}) | {px:.0f}x | {ex:.0f}x |")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (Whisper base included)")


if __name__ == "__main__":
    main()
