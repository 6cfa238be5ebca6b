"""Offline speaker accuracy on real synthesised audio with the real models (Whisper base, ECAPA-TDNN, pitch).

GDR-005 has five men within ~3 semitones of each other: the pitch diarizer alone labels all of it as the
host (39.7% of the speech time right). The floor of 90% is far above that and below the 99.9% measured: a
guest holds 13-18% of the speech, so losing any one of them to another cluster fails the test.
The four samples (mixed voices) stay exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.speaker_accuracy import speaker_accuracy

from gent_disagreement_rag.providers.transcribers.local_whisper import LocalWhisperTranscriber, shipped_whisper_base

REPO_ROOT = Path(__file__).resolve().parents[1]
SAME_GENDER_FLOOR = 0.90


@pytest.fixture(scope="module")
def transcriber(tmp_path_factory: pytest.TempPathFactory) -> LocalWhisperTranscriber:
    home = tmp_path_factory.mktemp("gdr-home")
    return LocalWhisperTranscriber(shipped_whisper_base(home / "models"), models=home / "models")


def accuracy(transcriber: LocalWhisperTranscriber, stem: str) -> tuple[float, int]:
    script = json.loads((REPO_ROOT / "data" / "samples" / f"{stem}.script.json").read_text())
    words = transcriber.transcribe(REPO_ROOT / "data" / "audio" / f"{stem}.mp3",
                                   speakers=len(script["speakers_map"])).transcript.words
    labels = [w.speaker for w in words]
    return speaker_accuracy([(w.start, w.end) for w in words], labels, script["turns"]), len(set(labels))


def test_five_similar_male_voices_are_told_apart(transcriber) -> None:
    share, found = accuracy(transcriber, "GDR-005")
    assert found == 5
    assert share >= SAME_GENDER_FLOOR


@pytest.mark.parametrize("stem", ["GDR-001", "GDR-002", "GDR-003", "GDR-004"])
def test_samples_stay_exact(transcriber, stem: str) -> None:
    share, _ = accuracy(transcriber, stem)
    assert share == pytest.approx(1.0, abs=1e-9)
