"""OpenAI embeddings through the official SDK, packed into as few requests as the API limits allow.

The SDK's retries are off: retries belong to the orchestration, which decides from the error class
(an `insufficient_quota` 429 never succeeds, yet the SDK would retry it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import openai

from ...errors import ConfigError, PermanentProviderError, ProviderError, QuotaExhaustedError, TransientProviderError
from ...settings import DEFAULT_OPENAI_MODEL, Settings
from ...text.tokens import count_tokens
from ..http import status_error
from . import EmbeddingBatch, model_id

MAX_INPUTS = 2048  # per request
MAX_REQUEST_TOKENS = 300_000  # summed over a request's inputs
MAX_INPUT_TOKENS = 8192  # per input
NATIVE_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
REQUEST_TIMEOUT = 60.0


def pack(token_counts: Sequence[int]) -> list[range]:
    """Consecutive index ranges, each within the per-request input and token limits."""
    batches: list[range] = []
    start = total = 0
    for i, n in enumerate(token_counts):
        if i > start and (i - start == MAX_INPUTS or total + n > MAX_REQUEST_TOKENS):
            batches.append(range(start, i))
            start, total = i, 0
        total += n
    if len(token_counts) > start:
        batches.append(range(start, len(token_counts)))
    return batches


# The rest talks HTTP, tested against the fake API (not in `make mutate`'s fast tests):
# pragma: no mutate block
def _provider_error(exc: openai.APIStatusError) -> ProviderError:
    """Our error class for an OpenAI HTTP error, from its status and error code (never the message:
    OpenAI's 401 message quotes part of the key)."""
    status = exc.status_code
    message = f"OpenAI embeddings answered HTTP {status} ({exc.code or exc.type or 'no error code'})"
    if exc.code == "insufficient_quota":
        return QuotaExhaustedError(f"{message}: the OpenAI account is out of credit", status=status)
    return status_error(status, message, exc.response.headers, auth_hint="check OPENAI_API_KEY")


class OpenAIEmbedder:
    """text-embedding-3-* (or ada-002) vectors, float32 and L2-normalised."""

    provider = "openai"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://api.openai.com/v1",
        model: str = DEFAULT_OPENAI_MODEL,
        dimensions: int | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        native = NATIVE_DIMENSIONS.get(model)
        size = dimensions or native
        if size is None:
            raise ConfigError(f"EMBEDDING_DIMENSIONS must be set for the unknown model {model!r}")
        self._sends_dimensions = model.startswith("text-embedding-3")
        if not self._sends_dimensions and native is not None and size != native:
            raise ConfigError(f"{model} has a fixed size of {native}; EMBEDDING_DIMENSIONS needs text-embedding-3-*")
        self.model = model
        self.dimensions = size
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIEmbedder:
        return cls(
            settings.require_secret("openai_api_key", "EMBEDDER=openai"),
            base_url=settings.openai_base_url,
            model=settings.embedding_model or DEFAULT_OPENAI_MODEL,
            dimensions=settings.embedding_dimensions,
            timeout=settings.openai_timeout,
        )

    @property
    def model_id(self) -> str:
        return model_id(self.provider, self.model, self.dimensions)

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        """Vectors in input order; checks every input before the first request, so nothing is billed
        for a batch that cannot complete."""
        counts = [count_tokens(text) for text in texts]
        for i, (text, n) in enumerate(zip(texts, counts, strict=True)):
            if not text:
                raise PermanentProviderError(f"input {i} is an empty string, which the embeddings API rejects")
            if n > MAX_INPUT_TOKENS:
                raise PermanentProviderError(
                    f"input {i} has {n} tokens, over the {MAX_INPUT_TOKENS}-token limit of {self.model} "
                    "(it is not truncated: split it)"
                )
        parts = [np.empty((0, self.dimensions), dtype=np.float32)]
        tokens = 0
        batches = pack(counts)
        for batch in batches:
            vectors, used = self._request([texts[i] for i in batch])
            parts.append(vectors)
            tokens += used
        vectors = np.concatenate(parts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return EmbeddingBatch(vectors=vectors / np.where(norms == 0, 1, norms), tokens=tokens, requests=len(batches),
                              provider=self.provider, model=self.model)

    def _request(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """One request's vectors (input order) and billed tokens, or one of our ProviderErrors (raised
        `from None`: the SDK's exceptions hold the request, whose headers carry the key)."""
        dimensions = self.dimensions if self._sends_dimensions else openai.omit
        try:
            response = self._client.embeddings.create(input=texts, model=self.model, dimensions=dimensions)
        except openai.APIStatusError as exc:
            raise _provider_error(exc) from None
        except openai.APITimeoutError:
            raise TransientProviderError("OpenAI embeddings request timed out") from None
        except openai.APIConnectionError:
            raise TransientProviderError("OpenAI embeddings connection failed") from None
        data = sorted(response.data, key=lambda item: item.index)
        vectors = np.array([item.embedding for item in data], dtype=np.float32)
        if vectors.shape != (len(texts), self.dimensions):
            raise PermanentProviderError(
                f"OpenAI returned vectors of shape {vectors.shape}, expected ({len(texts)}, {self.dimensions})"
            )
        return vectors, response.usage.total_tokens
