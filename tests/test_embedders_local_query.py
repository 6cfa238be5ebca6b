"""The query embedder: MiniLM on int8 kernels, built once under GDR_HOME, close to the stored vectors' model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from gent_disagreement_rag.providers.embedders.local_minilm import (
    LocalMiniLMEmbedder,
    LocalMiniLMQueryEmbedder,
    query_model_path,
)

TEXTS = [
    "Why do experts disagree so often?",
    "How did the transistor replace vacuum tubes at Bell Labs in 1947?",
    "What does a carbon tax cost a household, and who ends up paying it?",
    "Varroa mites spread deformed wing virus between honeybee colonies. " * 20,  # past 256 tokens
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gdr-home")


def test_query_vectors_are_close_to_the_stored_models_and_batch_independent(home: Path) -> None:
    query = LocalMiniLMQueryEmbedder(home / "models")
    batch = query.embed(TEXTS)
    assert batch.vectors.shape == (len(TEXTS), 384) and batch.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-5)
    for i, text in enumerate(TEXTS):  # one text per run: a text's vector does not depend on the others
        np.testing.assert_array_equal(query.embed([text]).vectors[0], batch.vectors[i])
    stored = LocalMiniLMEmbedder().embed(TEXTS).vectors
    cosines = (stored * batch.vectors).sum(axis=1)
    assert cosines.min() > 0.98, cosines  # measured: min 0.988, mean 0.994 over 100 queries
    assert query.model_id == "local/all-MiniLM-L6-v2@384"


def test_query_model_is_built_once_with_int8_matmuls_and_saved_optimized(home: Path) -> None:
    LocalMiniLMQueryEmbedder(home / "models").embed(["a first query builds the model"])
    path = query_model_path(home / "models")
    assert path.parent == home / "models" and path.exists()
    built = path.stat().st_mtime_ns
    LocalMiniLMQueryEmbedder(home / "models").embed(["a second embedder reuses it"])
    assert query_model_path(home / "models") == path and path.stat().st_mtime_ns == built
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 36  # 6 layers: Q, K, V, output, two feed-forward
    assert "MatMul" in ops  # the attention products (activations on both sides) stay fp32
    assert ops.count("SkipLayerNormalization") == 12  # saved with onnxruntime's fusions: loads without optimizing
    assert not list(home.glob("models/.*.tmp"))  # no staging file left behind
