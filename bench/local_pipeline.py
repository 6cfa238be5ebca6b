"""Benchmark of the local providers on this machine: Whisper base int8 + pitch diarizer, MiniLM int8 ONNX.

Prints one JSON object:
- "transcription": per episode length, audio seconds per wall second and per CPU second, peak RSS,
  WER and the share of words given the right speaker (two names, as the pipeline passes them). The episode is the two-voice espeak-ng dialogue
  of tests/test_providers_local.py, looped to about --minutes; each length runs in a process of its
  own so the peak RSS is that file's alone.
- "embeddings": short sentences and ~250-token chunks (the pipeline's chunk budget) per second.
- "five_voices" (run()): GDR-005 end to end (transcribe with its five names, chunk, MiniLM), with WER, speaker
  accuracy and each stage timed again on its own: where the time goes when the ECAPA embeddings must run.
- "load_average": the machine's, before and after; wall-clock figures on a shared machine depend on it,
  the per-CPU-second ones much less.

Needs espeak-ng and ffmpeg. Run from the repository root:
    uv run python -m bench.local_pipeline --minutes 15 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.speaker_accuracy import speaker_accuracy
from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMEmbedder
from gent_disagreement_rag.providers.transcribers import diarize, speaker_embeddings
from gent_disagreement_rag.providers.transcribers.local_whisper import (
    SAMPLE_RATE,
    LocalWhisperTranscriber,
    _phrases,
    decode,
)
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.text.chunking import chunk_transcript
from tests.support.speech import DIALOGUE, speaker_at, synthesize_dialogue, word_error_rate

ROOT = Path(__file__).resolve().parents[1]
FIVE_VOICES = "GDR-005"  # five men within ~3 semitones: the one sample where pitch cannot do and ECAPA must run
PAUSE_SECONDS = 0.6
SENTENCES = 1000
CHUNKS = 100


def peak_rss_mb() -> int:
    """This process's peak resident memory (Linux VmHWM: unlike ru_maxrss it does not carry over from the
    process that started this one, which a vfork'ed child shares until exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) // 1024


def _timed(work):
    """(result, wall seconds, CPU seconds of this process) of work()."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def make_episode(
    folder: Path, minutes: float, speech_share: float = 1.0
) -> tuple[Path, int, list[tuple[float, float, int]], float]:
    """The dialogue, padded with silence to make speech about `speech_share` of it, looped to about `minutes`.

    Returns (mp3, loops, turns of one loop, loop length in seconds). A sparse episode has a long file's
    memory (whole-file decode, pieces, diarizer) at a fraction of the transcription time (the VAD skips
    the silence).
    """
    one = folder / "dialogue.wav"
    turns = synthesize_dialogue(DIALOGUE, one, [PAUSE_SECONDS] * len(DIALOGUE))
    period = (turns[-1][1] + PAUSE_SECONDS) / speech_share
    padded = folder / "dialogue-padded.wav"
    ffmpeg = ["ffmpeg", "-loglevel", "error", "-y"]
    subprocess.run([*ffmpeg, "-i", str(one), "-af", f"apad=whole_dur={period:.3f}", str(padded)], check=True)
    loops = max(1, round(minutes * 60 / period))
    episode = folder / f"episode-{minutes:g}min-{speech_share:g}speech.mp3"
    loop = ["-stream_loop", str(loops - 1), "-i", str(padded)]
    subprocess.run([*ffmpeg, *loop, "-ac", "1", "-b:a", "64k", str(episode)], check=True)
    return episode, loops, turns, period


def transcription_figures(episode: Path, loops: int, turns: list[tuple[float, float, int]], period: float) -> dict:
    """Runs in a child process: transcribe once, measure, score."""
    transcriber, setup_seconds, _ = _timed(lambda: LocalWhisperTranscriber.from_settings(Settings()))
    result, wall, cpu = _timed(lambda: transcriber.transcribe(episode, speakers=2))  # two names, as in the pipeline
    transcript = result.transcript
    reference = " ".join(text for _, text in DIALOGUE * loops)
    hypothesis = " ".join(w.display for w in transcript.words)
    right = [w.speaker == speaker_at(turns, ((w.start + w.end) / 2) % period) for w in transcript.words]
    return {
        "audio_seconds": round(transcript.duration, 1),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "audio_seconds_per_wall_second": round(transcript.duration / wall, 1),
        "audio_seconds_per_cpu_second": round(transcript.duration / cpu, 1),
        "peak_rss_mb": peak_rss_mb(),
        "setup_seconds": round(setup_seconds, 1),
        "wer": round(word_error_rate(reference, hypothesis), 4),
        "speakers": len({w.speaker for w in transcript.words}),
        "speaker_accuracy": round(float(np.mean(right)), 4) if right else None,
        "options": transcriber.options(),
    }


def stage_figures(stem: str = FIVE_VOICES) -> dict:
    """Runs in a child process: one sample end to end (transcribe with its number of names, chunk, embed the
    chunks with MiniLM), then each stage again on its own to show where the time goes. Wall and CPU seconds."""
    meta = json.loads((ROOT / "data" / "samples" / f"{stem}.script.json").read_text())
    names = len(meta["speakers_map"])
    path = ROOT / "data" / "audio" / f"{stem}.mp3"
    transcriber = LocalWhisperTranscriber.from_settings(Settings())
    embedder = LocalMiniLMEmbedder()
    _timed(lambda: (transcriber._model.get(), transcriber._speaker_model.get(), embedder.embed(["warm up"])))

    def end_to_end():
        transcript = transcriber.transcribe(path, speakers=names).transcript
        embedder.embed([c.text for c in chunk_transcript(transcript, meta["speakers_map"])])
        return transcript

    transcript, wall, cpu = _timed(end_to_end)
    stages: dict[str, tuple[float, float]] = {}

    def stage(name: str, work):
        result, w, c = _timed(work)
        stages[name] = (round(w, 2), round(c, 2))
        return result

    from faster_whisper.vad import VadOptions, get_speech_timestamps

    audio = stage("audio decode + resampling", lambda: decode(path))
    stage("VAD (Silero; inside Whisper's time)", lambda: get_speech_timestamps(audio, VadOptions()))
    segments = stage("Whisper (VAD, decode, word times)", lambda: transcriber._whisper(audio, None)[0])
    words = [w for s in segments for w in s["words"]]
    spans = [(words[a]["start"], words[b]["end"]) for a, b in _phrases(words)]
    stage("pitch (YIN + 1-D k-means)", lambda: diarize.assign_speakers(audio, SAMPLE_RATE, spans, names))
    session = transcriber._speaker_model.get()
    stage("ECAPA + pitch (embeddings, clustering)",
          lambda: speaker_embeddings.assign_speakers(audio, SAMPLE_RATE, spans, names, lambda: session))
    chunks = stage("chunking", lambda: chunk_transcript(transcript, meta["speakers_map"]))
    stage("MiniLM (the chunks)", lambda: embedder.embed([c.text for c in chunks]))
    reference = " ".join(t["text"] for t in meta["turns"])
    return {
        "episode": stem,
        "names": names,
        "audio_seconds": round(transcript.duration, 1),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "audio_seconds_per_wall_second": round(transcript.duration / wall, 1),
        "audio_seconds_per_cpu_second": round(transcript.duration / cpu, 1),
        "wer": round(word_error_rate(reference, " ".join(w.display for w in transcript.words)), 4),
        "speaker_accuracy": round(speaker_accuracy([(w.start, w.end) for w in transcript.words],
                                                   [w.speaker for w in transcript.words], meta["turns"]), 4),
        "speakers": len({w.speaker for w in transcript.words}),
        "phrases": len(spans),
        "chunks": len(chunks),
        "stages": stages,
        "peak_rss_mb": peak_rss_mb(),
    }


def embedding_figures() -> dict:
    embedder = LocalMiniLMEmbedder()
    lines = [text for _, text in DIALOGUE]
    sentences = [f"{lines[i % len(lines)]} ({i})" for i in range(SENTENCES)]
    chunks = [" ".join(lines[(i + j) % len(lines)] for j in range(20)) for i in range(CHUNKS)]
    embedder.embed(sentences[:10])  # load the session
    figures = {}
    for name, texts in (("sentences", sentences), ("chunks", chunks)):
        batch, wall, cpu = _timed(lambda: embedder.embed(texts))
        figures[name] = {
            "count": len(texts),
            "mean_tokens": round(batch.tokens / len(texts), 1),
            "per_wall_second": round(len(texts) / wall, 1),
            "per_cpu_second": round(len(texts) / cpu, 1),
        }
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def _transcribe_in_child(episode: Path, loops: int, turns: list, period: float) -> dict:
    return _child("--child", json.dumps([str(episode), loops, turns, period]))


def _child(*args: str) -> dict:
    child = subprocess.run([sys.executable, "-m", "bench.local_pipeline", *args], check=True, capture_output=True, text=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def run(*, quick: bool = False) -> dict:
    """For bench.run_all: embeddings per second; Whisper speed on an all-speech episode; the peak RSS of a
    60-minute episode (speech + silence). Each transcription in a process of its own (a clean peak RSS)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load = lambda: round(os.getloadavg()[0], 2)  # noqa: E731
    report: dict = {"cpus": os.cpu_count(), "load_before": load()}
    report["embeddings"] = embedding_figures()
    report["embeddings"]["load"] = load()
    print(f"  local: MiniLM {report['embeddings']['chunks']['per_wall_second']} chunks/s, "
          f"{report['embeddings']['sentences']['per_wall_second']} sentences/s (load {load()})", flush=True)
    with tempfile.TemporaryDirectory(prefix="gdr-bench-") as folder:
        minutes = 1.0 if quick else 5.0
        figures = _transcribe_in_child(*make_episode(Path(folder), minutes))
        figures["load"] = load()
        report["speech"] = figures
        print(f"  local: Whisper, {minutes:g} min of speech: {figures['audio_seconds_per_wall_second']} audio s per wall s, "
              f"peak RSS {figures['peak_rss_mb']} MB (load {load()})", flush=True)
        figures = _child("--stages")
        figures["load"] = load()
        report["five_voices"] = figures
        print(f"  local: {figures['episode']} end to end: {figures['audio_seconds_per_wall_second']} audio s per wall s, "
              f"speakers {figures['speaker_accuracy']:.1%} (load {load()})", flush=True)
        if not quick:
            share = 0.25
            figures = _transcribe_in_child(*make_episode(Path(folder), 60.0, share))
            figures["speech_share"] = share
            figures["load"] = load()
            report["sixty_minutes"] = figures
            print(f"  local: Whisper, 60 min ({share:.0%} speech): peak RSS {figures['peak_rss_mb']} MB, "
                  f"{figures['wall_seconds']} s (load {load()})", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[15.0], help="episode lengths to transcribe")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON [episode, loops, turns, period]: one transcription
    parser.add_argument("--stages", action="store_true", help=argparse.SUPPRESS)  # stage_figures() in this process
    args = parser.parse_args()
    if args.stages:
        print(json.dumps(stage_figures()))
        return
    if args.child:
        episode, loops, turns, period = json.loads(args.child)
        print(json.dumps(transcription_figures(Path(episode), loops, turns, period)))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict = {"cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    report["embeddings"] = embedding_figures()
    report["transcription"] = {}
    with tempfile.TemporaryDirectory(prefix="gdr-bench-") as folder:
        for minutes in args.minutes:
            report["transcription"][f"{minutes:g}min"] = _transcribe_in_child(*make_episode(Path(folder), minutes))
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
