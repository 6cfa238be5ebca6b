"""Episodes spoken by chosen espeak-ng voices, for the voice-library tests: WAV files in a test's audio folder, the
catalogue naming (or not) their speakers, the environment pointing `gdr` at them, and a Deepgram response whose
words fall on the real turns."""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
from bench.speaker_draws import SAMPLE_RATE, Voice, synthesise

from gent_disagreement_rag.settings import Settings
from tests.support.builders import app_environment
from tests.support.fakeapi import FakeAPI, deepgram_response

# Three voices far apart (a low American man, a British woman, a Scottish man of middle pitch).
ANN = Voice("en", "f3", 70, 160)
BOB = Voice("en-us", "m3", 30, 165)
CARA = Voice("en-gb-scotland", "Andy", 50, 150)
LINES = (
    "We started the show to argue about the economy, and we have not stopped since.",
    "That is true, although I think the arguments have become more polite over the years.",
    "Polite is one word for it. Our listeners write to say we agree far too often now.",
    "Then today we should pick something we truly disagree about, like housing policy.",
    "Housing is a good choice. Rents have risen faster than wages in most large cities.",
    "The question is whether building more homes brings those rents down quickly enough.",
    "I would say it does over ten years, but nobody wants to wait ten years for relief.",
    "So the politics and the economics point in different directions, as they often do.",
)

Turn = tuple[Voice, str]


def spoken_episode(path: Path, turns: list[Turn], gap: float = 0.6) -> list[tuple[float, float, Voice, str]]:
    """Speak the turns into a 16 kHz WAV at `path`; returns each turn's (start, end, voice, text)."""
    pieces, timed, position = [], [], int(0.5 * SAMPLE_RATE)
    for voice, text in turns:
        samples = synthesise(text, voice)
        pieces.append(np.zeros(position - sum(len(p) for p in pieces), np.float32))
        pieces.append(samples)
        timed.append((position / SAMPLE_RATE, (position + len(samples)) / SAMPLE_RATE, voice, text))
        position += len(samples) + int(gap * SAMPLE_RATE)
    pieces.append(np.zeros(SAMPLE_RATE // 2, np.float32))
    pcm = (np.clip(np.concatenate(pieces), -1, 1) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return timed


def dialogue(first: Voice, second: Voice, offset: int = 0) -> list[Turn]:
    """Four turns, the two voices alternating, a line of LINES each, starting at line `offset` (about 25 s)."""
    return [(first if i % 2 == 0 else second, LINES[(offset + i) % len(LINES)]) for i in range(4)]


def voice_catalogue(settings: Settings, fake_api: FakeAPI, monkeypatch: Any, episodes: dict[str, tuple[list[Turn], dict[str, str] | None]],
                    **environment: str) -> dict[str, list[tuple[float, float, Voice, str]]]:
    """Write each episode's audio and the catalogue ({id: (turns, speakers_map or None)}), point the environment at
    them (plus `environment`, e.g. TRANSCRIBER=local); returns each episode's timed turns."""
    timed, entries = {}, []
    for episode_id, (turns, speakers_map) in episodes.items():
        timed[episode_id] = spoken_episode(settings.audio_dir / f"{episode_id}.wav", turns)
        entries.append({"episode_id": episode_id, "file_name": f"{episode_id}.wav", "title": f"Episode {episode_id}",
                        **({"speakers_map": speakers_map} if speakers_map else {})})
    settings.episodes_file.write_text(json.dumps(entries))
    for name, value in {**app_environment(settings, fake_api), **environment}.items():
        monkeypatch.setenv(name, value)
    return timed


def deepgram_turns(timed: list[tuple[float, float, Voice, str]], labels: dict[Voice, int], sha256: str = "") -> dict[str, Any]:
    """A Deepgram response for the spoken turns: each turn's words spread over its real time, labelled as
    `labels` says (Deepgram numbers speakers its own way)."""
    response = deepgram_response([(labels[voice], text) for _, _, voice, text in timed], sha256=sha256,
                                 duration=timed[-1][1] + 0.5)
    words = response["results"]["channels"][0]["alternatives"][0]["words"]
    at = 0
    for start, end, _, text in timed:
        count = len(text.split())
        slot = (end - start) / count
        for i in range(count):
            words[at + i]["start"], words[at + i]["end"] = round(start + i * slot, 3), round(start + (i + 0.8) * slot, 3)
        at += count
    for utterance, paragraph, (start, end, _, _) in zip(response["results"]["utterances"],
                                                        response["results"]["channels"][0]["alternatives"][0]["paragraphs"]["paragraphs"],
                                                        timed, strict=True):
        utterance["start"], utterance["end"] = paragraph["start"], paragraph["end"] = start, end
        paragraph["sentences"][0]["start"], paragraph["sentences"][0]["end"] = start, end
    return response
