"""Local providers on real models: faster-whisper (Whisper base int8), the pitch diarizer, MiniLM ONNX.

Speech is synthesised with espeak-ng (a man's and a woman's voice) so the words and turn times are
known. Models load once per session. espeak-ng and ffmpeg are required: CI installs them, and a
missing one fails here rather than skipping.
"""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from gent_disagreement_rag.errors import ConfigError, PermanentProviderError
from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMEmbedder
from gent_disagreement_rag.providers.transcribers.diarize import assign_speakers
from gent_disagreement_rag.providers.transcribers.local_whisper import (
    SAMPLE_RATE,
    WHISPER_BASE_BYTES,
    LocalWhisperTranscriber,
    decode,
    parse_local_response,
    piece_bounds,
    shipped_whisper_base,
)
from gent_disagreement_rag.settings import Settings
from tests.support.speech import DIALOGUE, LONG_PAUSE_AFTER, Turns, speaker_at, synthesize_dialogue, word_error_rate


@pytest.fixture(scope="session")
def speech_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "ffmpeg") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not installed: the local-provider tests synthesise speech with them "
            "(apt-get install espeak-ng ffmpeg)"
        )


@pytest.fixture(scope="session")
def gdr_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gdr-home")


@pytest.fixture(scope="session")
def transcriber(gdr_home: Path) -> LocalWhisperTranscriber:
    return LocalWhisperTranscriber.from_settings(Settings(_env_file=None, gdr_home=gdr_home))


@pytest.fixture(scope="session")
def dialogue(speech_tools: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Turns]:
    path = tmp_path_factory.mktemp("audio") / "dialogue.mp3"
    pauses = [2.5 if i == LONG_PAUSE_AFTER else 0.6 for i in range(len(DIALOGUE))]
    return path, synthesize_dialogue(DIALOGUE, path, pauses)


@pytest.fixture(scope="session")
def dialogue_result(transcriber: LocalWhisperTranscriber, dialogue):
    return transcriber.transcribe(dialogue[0])


@pytest.fixture(scope="session")
def embedder() -> LocalMiniLMEmbedder:
    return LocalMiniLMEmbedder.from_settings(Settings(_env_file=None))


# --- Whisper ----------------------------------------------------------------------------------


def test_whisper_base_is_joined_once_even_when_two_callers_race(tmp_path: Path) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(shipped_whisper_base(tmp_path / "models"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    folder = tmp_path / "models" / "whisper-base"
    assert results == [folder, folder]
    assert (folder / "model.bin").stat().st_size == WHISPER_BASE_BYTES
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["whisper-base"]  # no staging folder left


def test_transcribes_synthetic_speech_accurately(dialogue_result) -> None:
    transcript = dialogue_result.transcript
    reference = " ".join(text for _, text in DIALOGUE)
    hypothesis = " ".join(w.display for w in transcript.words)
    error = word_error_rate(reference, hypothesis)
    assert error < 0.15, f"WER {error:.1%}: {hypothesis}"
    assert transcript.provider == "local" and transcript.model == "whisper-base-int8"
    assert transcript.language == "en"
    assert all(w.text == w.text.lower() and w.punctuated and w.text in w.punctuated.lower() for w in transcript.words)


def test_word_times_increase_and_stay_within_the_clip(dialogue, dialogue_result) -> None:
    transcript = dialogue_result.transcript
    duration = dialogue[1][-1][1] + 0.6
    assert transcript.duration == pytest.approx(duration, abs=0.1)
    starts = [w.start for w in transcript.words]
    assert starts == sorted(starts)
    assert all(0.0 <= w.start <= w.end <= transcript.duration for w in transcript.words)
    spans = transcript.utterances
    assert spans and spans[0].first_word == 0 and spans[-1].last_word == len(transcript.words) - 1
    assert all(a.last_word + 1 == b.first_word for a, b in zip(spans, spans[1:]))


def test_raw_response_rebuilds_the_same_transcript(dialogue_result) -> None:
    raw = json.loads(json.dumps(dialogue_result.raw))
    assert raw["provider"] == "local" and raw["info"]["duration_after_vad"] > 0
    assert parse_local_response(raw) == dialogue_result.transcript


def test_pieces_are_shifted_back_to_file_time(transcriber: LocalWhisperTranscriber, dialogue, dialogue_result) -> None:
    path, truth = dialogue
    pieces = LocalWhisperTranscriber(transcriber.model_folder, piece_seconds=12.0)
    assert len(piece_bounds(decode(path), pieces.piece_seconds)) >= 3
    whole, pieced = dialogue_result.transcript.words, pieces.transcribe(path).transcript.words
    matcher = difflib.SequenceMatcher(a=[w.text for w in whole], b=[w.text for w in pieced], autojunk=False)
    pairs = [(whole[m.a + k], pieced[m.b + k]) for m in matcher.get_matching_blocks() for k in range(m.size)]
    assert len(pairs) >= 0.85 * len(whole)
    offsets = np.array([abs(a.start - b.start) for a, b in pairs])
    assert np.median(offsets) < 0.1 and np.percentile(offsets, 90) < 0.5, offsets
    assert pieced[-1].end > truth[-1][1] - 2.0  # the last piece is in file time, not piece time


def test_two_transcriptions_at_once_give_the_words_of_one_alone(transcriber: LocalWhisperTranscriber, dialogue,
                                                                 dialogue_result) -> None:
    """at_once=2 (one thread each, one shared model) only changes the speed: same transcript, bit for bit."""
    shared = LocalWhisperTranscriber(transcriber.model_folder, cpu_threads=2, at_once=2)
    assert (shared.at_once, shared.cpu_threads, shared.options()) == (2, 1, transcriber.options())
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(shared.transcribe(dialogue[0]))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.transcript for r in results] == [dialogue_result.transcript] * 2


def test_piece_cuts_fall_in_silences() -> None:
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, 100 * SAMPLE_RATE).astype(np.float32)
    for silence in (8.0, 19.0, 33.0, 52.0, 68.0, 83.0):  # 1 s silences
        audio[int(silence * SAMPLE_RATE) : int((silence + 1) * SAMPLE_RATE)] = 0
    bounds = piece_bounds(audio, 20.0)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(audio)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(end - start <= 20 * SAMPLE_RATE for start, end in bounds)
    for _, cut in bounds[:-1]:
        assert audio[cut - 100 : cut + 100].max() == 0, cut / SAMPLE_RATE


def _video_only(path: Path) -> None:
    video = ["-f", "lavfi", "-i", "testsrc=duration=1:size=32x32:rate=5", "-f", "mp4"]
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *video, str(path)], check=True)


UNDECODABLE = {
    "zero-byte": lambda path, good: path.write_bytes(b""),
    "text": lambda path, good: path.write_text("this is a text file, not audio\n"),
    "truncated-header": lambda path, good: path.write_bytes(good.read_bytes()[:300]),
    "no-audio-stream": lambda path, good: _video_only(path),
}


@pytest.mark.parametrize("kind", UNDECODABLE)
def test_undecodable_audio_is_a_permanent_error_naming_the_file(
    transcriber: LocalWhisperTranscriber, dialogue, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "episode 7.mp3"
    UNDECODABLE[kind](path, dialogue[0])
    with pytest.raises(PermanentProviderError, match="episode 7.mp3: cannot decode the audio"):
        transcriber.transcribe(path)


def test_local_whisper_folder_without_weights_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LOCAL_WHISPER_MODEL"):
        LocalWhisperTranscriber.from_settings(Settings(_env_file=None, local_whisper_model=tmp_path))


# --- speakers ---------------------------------------------------------------------------------


def test_two_voices_get_two_speakers_with_the_right_turns(dialogue, dialogue_result) -> None:
    words = dialogue_result.transcript.words
    assert {w.speaker for w in words} == {0, 1}
    right = sum(w.speaker == speaker_at(dialogue[1], (w.start + w.end) / 2) for w in words)
    assert right >= 0.9 * len(words)


def _turn_audio(tmp_path: Path, voices: dict[int, tuple[str, str]]) -> tuple[np.ndarray, list[tuple[float, float]], list[int]]:
    truth = synthesize_dialogue(DIALOGUE, tmp_path / "turns.wav", [0.4] * len(DIALOGUE), voices)
    return decode(tmp_path / "turns.wav"), [(start, end) for start, end, _ in truth], [voice for *_, voice in truth]


def test_diarizer_separates_voices_of_different_pitch(speech_tools, tmp_path: Path) -> None:
    audio, spans, voices = _turn_audio(tmp_path, {0: ("en-us", "40"), 1: ("en+f4", "60")})
    assert assign_speakers(audio, SAMPLE_RATE, spans, max_speakers=4) == voices


def test_diarizer_keeps_voices_of_similar_pitch_as_one_speaker(speech_tools, tmp_path: Path) -> None:
    audio, spans, _ = _turn_audio(tmp_path, {0: ("en-us", "50"), 1: ("en-gb", "50")})
    assert set(assign_speakers(audio, SAMPLE_RATE, spans, max_speakers=4)) == {0}


# --- embeddings -------------------------------------------------------------------------------


def test_paraphrase_ranks_above_unrelated_sentence(embedder: LocalMiniLMEmbedder) -> None:
    texts = [
        "Why do experts disagree so often?",
        "What makes specialists reach different conclusions?",
        "Bake the bread for forty minutes.",
    ]
    query, paraphrase, unrelated = embedder.embed(texts).vectors
    assert query @ paraphrase > query @ unrelated + 0.2


def test_vectors_are_unit_384d_and_deterministic(embedder: LocalMiniLMEmbedder) -> None:
    texts = [text for _, text in DIALOGUE] * 5
    batch = embedder.embed(texts)
    assert batch.vectors.shape == (len(texts), 384) and batch.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embedder.embed(texts).vectors, batch.vectors)
    np.testing.assert_allclose(embedder.embed(texts[:1]).vectors[0], batch.vectors[0], atol=1e-5)  # batch-independent
    assert batch.requests == 0 and batch.tokens > len(texts) * 5
    assert embedder.model_id == "local/all-MiniLM-L6-v2@384"
    assert embedder.embed([]).vectors.shape == (0, 384)


@pytest.mark.parametrize("field", [{"embedding_model": "text-embedding-3-small"}, {"embedding_dimensions": 256}])
def test_unsupported_local_embedding_settings_are_config_errors(field: dict) -> None:
    with pytest.raises(ConfigError, match="EMBEDDER=local"):
        LocalMiniLMEmbedder.from_settings(Settings(_env_file=None, embedder="local", **field))


def test_gdr_format_rebuilds_the_exports_from_a_local_raw_response(dialogue_result, tmp_path: Path) -> None:
    """The `gdr format` command, in its own process, on what local Whisper really saved: every word comes back."""
    raw_path = tmp_path / "dialogue.raw.json"
    raw_path.write_text(json.dumps(dialogue_result.raw), encoding="utf-8")
    gdr = Path(sys.executable).parent / "gdr"
    result = subprocess.run([str(gdr), "format", str(raw_path), "--speakers-map", '{"0": "Tom", "1": "Ann"}',
                             "--max-tokens", "40"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    chunks = json.loads((tmp_path / "dialogue.chunks.json").read_text(encoding="utf-8"))
    # The console wraps long lines, anywhere in a long temporary path: compare without whitespace.
    assert "".join(result.stdout.split()).startswith(f"{len(chunks)}chunksfrom{raw_path}")
    spoken = [w for segment in dialogue_result.raw["segments"] for w in segment["words"]]
    assert "".join("".join(c["text"].split()) for c in chunks) == "".join("".join(w["word"].split()) for w in spoken)
    assert {c["speaker"] for c in chunks} == {"Tom", "Ann"}
    assert max(c["token_count"] for c in chunks) <= 40
    assert (chunks[0]["start"], chunks[-1]["end"]) == (spoken[0]["start"], spoken[-1]["end"])
    srt = (tmp_path / "dialogue.srt").read_text(encoding="utf-8")
    assert srt.startswith("1\n00:00:") and "Tom: " in srt and "Ann: " in srt
