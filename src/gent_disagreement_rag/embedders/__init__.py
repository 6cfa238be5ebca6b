"""Embedders: texts in, vectors out, with the model id, dimension and usage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..settings import Settings


@dataclass(frozen=True, slots=True)
class EmbeddingBatch:
    vectors: np.ndarray  # float32, shape (len(texts), dimensions), L2-normalised
    tokens: int  # tokens billed (or counted, for local models)
    requests: int  # provider requests made (0 for local models)


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


def make_embedder(settings: Settings) -> Embedder:
    """The embedder the settings choose (EMBEDDER=auto: OpenAI when its key is set)."""
    if settings.resolved_embedder == "openai":
        from .openai import OpenAIEmbedder

        return OpenAIEmbedder.from_settings(settings)
    from .local_minilm import LocalMiniLMEmbedder

    return LocalMiniLMEmbedder.from_settings(settings)
