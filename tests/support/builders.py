"""Test data shared by tests and benchmarks; importing it has no side effects (unlike conftest)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gent_disagreement_rag.text.chunking import Chunk

if TYPE_CHECKING:
    from gent_disagreement_rag.settings import Settings
    from tests.support.fakeapi import FakeAPI

DEEPGRAM_FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "deepgram"
# Named, not globbed: a missing file fails collection loudly instead of leaving a parametrized test with no cases.
DEEPGRAM_FIXTURE_NAMES = (
    "nasa_eva_170s_3spk_nova2_utterances.json",
    "phone_call_463s_2spk_nova3_utterances.json",
    "zh_podcast_1418s_4spk_base_diarized.json",
)


def deepgram_fixture(name: str) -> Path:
    """The path of a real captured Deepgram response in tests/fixtures/deepgram (see its SOURCES.md)."""
    path = DEEPGRAM_FIXTURES_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"test fixture missing: {path} (tests/fixtures/deepgram/SOURCES.md lists them)")
    return path


DEEPGRAM_FIXTURE_FILES = [deepgram_fixture(name) for name in DEEPGRAM_FIXTURE_NAMES]


def segment(position: int, speaker: str, start: float, end: float, text: str, token_count: int) -> Chunk:
    """A chunk as the store writes it, for tests and benchmarks that store segments without a transcript."""
    return Chunk(position, speaker, None, (speaker,), start, end, text, token_count, 0, 0)


def make_audio(path: Path, seconds: float, frequency: int) -> Path:
    """A small, distinct mp3 (a sine tone): the fake Deepgram answers with a transcript spanning it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"sine=frequency={frequency}:duration={seconds}",
         "-ac", "1", "-ar", "16000", "-b:a", "32k", str(path)],
        check=True,
    )
    return path


def cl100k_count(text: str) -> int:
    """Tokens as the embeddings API counts them, by tiktoken itself (not our count_tokens). The vocabulary is
    put in tiktoken's cache by our `encoding()` first: tiktoken would download it, and tests have no network."""
    import tiktoken

    from gent_disagreement_rag.text.tokens import encoding

    encoding()
    return len(tiktoken.get_encoding("cl100k_base").encode(text, disallowed_special=()))


def tone_catalogue(settings: Settings, fake_api: FakeAPI, monkeypatch: Any, tones: dict[str, tuple[float, int]],
                   speakers_map: dict[str, str] | None = None) -> list[str]:
    """A catalogue of episodes whose audio is a tone each ({episode_id: (seconds, frequency)}), and the
    environment (monkeypatch) pointing every setting at the test's world and the fake providers; returns the ids."""
    entries = []
    for episode_id, (seconds, frequency) in tones.items():
        make_audio(settings.audio_dir / f"{episode_id}.mp3", seconds, frequency)
        entries.append({"episode_id": episode_id, "file_name": f"{episode_id}.mp3",
                        **({"speakers_map": speakers_map} if speakers_map else {})})
    settings.episodes_file.write_text(json.dumps(entries))
    for name, value in app_environment(settings, fake_api).items():
        monkeypatch.setenv(name, value)
    return list(tones)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_environment(settings: Settings, fake_api: FakeAPI) -> dict[str, str]:
    """The variables that point the application (in this process or a child) at a test's database, folders
    and the fake providers."""
    return {
        "DATABASE_URL": settings.external_database_url(),
        "GDR_HOME": str(settings.gdr_home),
        "EPISODES_FILE": str(settings.episodes_file),
        "AUDIO_DIR": str(settings.audio_dir),
        "TRANSCRIPTS_DIR": str(settings.transcripts_dir),
        **{k.upper(): v for k, v in fake_api.settings_fields().items()},
        **shared_models(),
    }


def shared_models() -> dict[str, str]:
    """The session's MODELS_DIR (tests/conftest.py), for a child process given an environment of its own."""
    return {"MODELS_DIR": os.environ["MODELS_DIR"]} if "MODELS_DIR" in os.environ else {}


def run_ingest(**parameters: Any):
    """The `ingest` flow in this process as a deployment runs it: settings from the environment, its own
    context (pool, providers), closed at the end. Returns its final state."""
    from gent_disagreement_rag.orchestration.flows import ingest

    return ingest(**parameters, return_state=True)


def decoded_seconds(path: Path) -> float:
    """The audio's length by decoding it with ffmpeg and counting samples (mp3 gapless info trims the padding)."""
    pcm = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
                         check=True, capture_output=True).stdout
    return len(pcm) / 2 / 16_000
