"""Embedders: texts in, vectors out, with the model that made them and what it cost (tokens, requests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ...errors import ConfigError
from ...settings import DEFAULT_LOCAL_MODEL, DEFAULT_OPENAI_MODEL, Settings
from ..pricing import openai_cost
from ..registry import ModelId


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


# The model local_minilm.py ships, and the one the chat server embeds its questions with (migration 0004's views).
LOCAL_MINILM_MODEL = ModelId("local", DEFAULT_LOCAL_MODEL, 384)
CHAT_SERVER_MODEL = ModelId("openai", DEFAULT_OPENAI_MODEL, 1536)


def model_id(provider: str, model: str, dimensions: int) -> str:
    return str(ModelId(provider, model, dimensions))


class LocalEmbedders:
    """all-MiniLM-L6-v2, shipped in a pip package, on int8 kernels (local_minilm.py)."""

    name = "local"

    def settings_model(self, settings: Settings) -> ModelId:
        return LOCAL_MINILM_MODEL

    def embedder(self, settings: Settings) -> Embedder:
        from .local_minilm import LocalMiniLMEmbedder

        return LocalMiniLMEmbedder.from_settings(settings)

    def query_embedder(self, model: ModelId, settings: Settings) -> Embedder:
        from .local_minilm import LocalMiniLMQueryEmbedder

        if model != self.settings_model(settings):
            raise ConfigError(f"the stored vectors were made with {model}, which is not available locally")
        return LocalMiniLMQueryEmbedder(settings.models)

    def cost(self, settings: Settings, tokens: int) -> float:
        return 0.0


class OpenAIEmbedders:
    """OpenAI's text-embedding-3-* (and ada-002) over its API (openai.py)."""

    name = "openai"

    def settings_model(self, settings: Settings) -> ModelId:
        from .openai import NATIVE_DIMENSIONS

        name = settings.embedding_model or DEFAULT_OPENAI_MODEL
        return ModelId(self.name, name, settings.embedding_dimensions or NATIVE_DIMENSIONS.get(name, 0))

    def embedder(self, settings: Settings) -> Embedder:
        from .openai import OpenAIEmbedder

        return OpenAIEmbedder.from_settings(settings)

    def query_embedder(self, model: ModelId, settings: Settings) -> Embedder:
        from .openai import OpenAIEmbedder

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        if not key:
            raise ConfigError(
                f"the stored vectors were made with {model}; set OPENAI_API_KEY to embed the query "
                "with the same model, or re-ingest with EMBEDDER=local (or search with --mode text)"
            )
        return OpenAIEmbedder(key, base_url=settings.openai_base_url, model=model.model, dimensions=model.dimensions,
                              timeout=settings.openai_timeout)

    def cost(self, settings: Settings, tokens: int) -> float:
        return openai_cost(settings, tokens)
