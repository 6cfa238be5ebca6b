"""Fast stand-ins registered through the provider registry (PROVIDER_PLUGINS=tests.support.scripted_providers),
for tests whose subject is not transcription or embedding: the pipeline, the store, the orchestration.

- TRANSCRIBER=scripted: the words of the sample episode's script (data/samples/<stem>.script.json, made with
  the audio by data/make_samples.py), each turn's words spread evenly over the turn's time, with its speaker.
  An audio file without a script is undecodable to it, as to a real transcriber.
- EMBEDDER=hashed: 64-d unit vectors from hashed word counts, so texts sharing words are near.

The plugin travels in the environment, so every process a run starts (a `gdr` subprocess, a Prefect worker,
a Dask worker) registers the same fakes. Tests about Whisper, MiniLM, Deepgram or OpenAI use the real ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gent_disagreement_rag.errors import UndecodableAudioError
from gent_disagreement_rag.providers.embedders import EmbeddingBatch
from gent_disagreement_rag.providers.registry import ModelId, Registry
from gent_disagreement_rag.providers.transcribers import AudioProgress
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.transcript import Transcript, TranscriptionResult, Word

SCRIPTS = Path(__file__).resolve().parents[2] / "data" / "samples"
PLUGIN = __name__
HASHED_DIMENSIONS = 256


def scripted_transcript(raw: Mapping[str, Any]) -> Transcript:
    words = []
    for turn in raw["turns"]:
        spoken = turn["text"].split()
        step = (turn["end"] - turn["start"]) / max(len(spoken), 1)
        for i, text in enumerate(spoken):
            start = turn["start"] + i * step
            words.append(Word(text.strip(".,?!;:\"'").lower() or text, round(start, 3), round(start + step, 3),
                              turn["speaker"], text, 0.99))
    return Transcript("scripted", "script", raw["duration"], words, {}, "en")


class ScriptedTranscriber:
    provider = "scripted"
    model = "script"
    uses_speaker_count = False

    def options(self) -> dict[str, Any]:
        return {}

    def transcribe(self, audio_path: Path, progress: AudioProgress | None = None, speakers: int | None = None
                   ) -> TranscriptionResult:
        script = SCRIPTS / f"{audio_path.stem}.script.json"
        if not script.exists():
            raise UndecodableAudioError(f"{audio_path}: the scripted transcriber has no script for it")
        data = json.loads(script.read_text(encoding="utf-8"))
        raw = {"provider": self.provider, "duration": data["duration"], "turns": data["turns"]}
        if progress is not None:
            progress(data["duration"], data["duration"])
        return TranscriptionResult(scripted_transcript(raw), raw)


class ScriptedTranscribers:
    name = "scripted"
    fleet_limited = False

    def transcriber(self, settings: Settings, at_once: int) -> ScriptedTranscriber:
        return ScriptedTranscriber()

    def reads(self, raw: Mapping[str, Any]) -> bool:
        return raw.get("provider") == self.name

    def parse_raw(self, raw: dict[str, Any]) -> Transcript:
        return scripted_transcript(raw)

    def cost(self, settings: Settings, audio_seconds: float) -> float:
        return 0.0


class HashedEmbedder:
    provider = "hashed"
    model = "words"
    dimensions = HASHED_DIMENSIONS

    @property
    def model_id(self) -> str:
        return str(ModelId(self.provider, self.model, self.dimensions))

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                bucket = int.from_bytes(hashlib.blake2b(word.strip(".,?!").encode(), digest_size=4).digest(), "big")
                vectors[row, bucket % self.dimensions] += 1.0
            vectors[row] /= max(float(np.linalg.norm(vectors[row])), 1e-9)
        tokens = sum(len(t.split()) for t in texts)
        return EmbeddingBatch(vectors, tokens, 0, self.provider, self.model)


class HashedEmbedders:
    name = "hashed"

    def settings_model(self, settings: Settings) -> ModelId:
        return ModelId(self.name, HashedEmbedder.model, HASHED_DIMENSIONS)

    def embedder(self, settings: Settings) -> HashedEmbedder:
        return HashedEmbedder()

    def query_embedder(self, model: ModelId, settings: Settings) -> HashedEmbedder:
        return HashedEmbedder()

    def cost(self, settings: Settings, tokens: int) -> float:
        return 0.0


def register(registry: Registry) -> None:
    registry.add_transcriber(ScriptedTranscribers())
    registry.add_embedder(HashedEmbedders())
