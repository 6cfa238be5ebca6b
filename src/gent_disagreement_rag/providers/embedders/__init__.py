"""Embedders: texts in, vectors out, with the model that made them and what it cost (tokens, requests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ...settings import DEFAULT_LOCAL_MODEL, DEFAULT_OPENAI_MODEL, Settings


@dataclass(frozen=True, slots=True)
class EmbeddingBatch:
    """Vectors with their own provenance and usage: storing and billing them needs no embedder."""

    vectors: np.ndarray  # float32, shape (len(texts), dimensions), L2-normalised
    tokens: int  # tokens billed (or counted, for local models)
    requests: int  # provider requests made (0 for local models)
    provider: str
    model: str

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def model_id(self) -> str:
        return model_id(self.provider, self.model, self.dimensions)


class Embedder(Protocol):
    provider: str
    model: str
    dimensions: int

    @property
    def model_id(self) -> str:
        """Stable id stored next to the vectors, e.g. 'openai/text-embedding-3-small@1536'."""
        ...

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch: ...


def model_id(provider: str, model: str, dimensions: int) -> str:
    return f"{provider}/{model}@{dimensions}"


def settings_model_id(settings: Settings) -> str:
    """The model id the current settings' embedder produces, without building it (no model load, no key
    check): what search prefers and what the ingest plan wants every episode to have vectors of."""
    if settings.resolved_embedder == "local":
        return model_id("local", DEFAULT_LOCAL_MODEL, 384)
    from .openai import NATIVE_DIMENSIONS

    name = settings.embedding_model or DEFAULT_OPENAI_MODEL
    return model_id("openai", name, settings.embedding_dimensions or NATIVE_DIMENSIONS.get(name, 0))


def make_embedder(settings: Settings) -> Embedder:
    """The embedder the settings choose (EMBEDDER=auto: OpenAI when its key is set)."""
    if settings.resolved_embedder == "openai":
        from .openai import OpenAIEmbedder

        return OpenAIEmbedder.from_settings(settings)
    from .local_minilm import LocalMiniLMEmbedder

    return LocalMiniLMEmbedder.from_settings(settings)
