"""One registry decides which provider serves a model id and which transcriber a setting names; a plugin
module named in PROVIDER_PLUGINS adds its own, and they reach every process a run starts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from gent_disagreement_rag.errors import ConfigError
from gent_disagreement_rag.providers.embedders import LOCAL_MINILM_MODEL
from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMQueryEmbedder
from gent_disagreement_rag.providers.registry import ModelId, embedder_for, provider_registry, transcriber_for
from gent_disagreement_rag.settings import Settings
from tests.support import scripted_providers
from tests.support.paths import REPO_ROOT
from tests.support.servers import gdr_executable, server_environment


@pytest.mark.fast
def test_a_model_id_names_its_provider_model_and_size() -> None:
    parsed = ModelId.parse("openai/text-embedding-3-small@512")
    assert parsed == ModelId("openai", "text-embedding-3-small", 512)
    assert str(parsed) == "openai/text-embedding-3-small@512"
    with pytest.raises(ValueError, match="not a model id"):
        ModelId.parse("text-embedding-3-small")


@pytest.mark.fast
def test_the_query_embedder_is_the_one_of_the_stored_vectors_provider(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, gdr_home=tmp_path, embedder="openai", openai_api_key="sk-test")
    # The settings say OpenAI, but vectors made by MiniLM are searched with MiniLM.
    assert isinstance(embedder_for(str(LOCAL_MINILM_MODEL), settings), LocalMiniLMQueryEmbedder)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        embedder_for("openai/text-embedding-3-small@1536", Settings(_env_file=None, gdr_home=tmp_path))
    with pytest.raises(ConfigError, match="no registered embedder"):
        embedder_for("cohere/embed-v4@1024", settings)
    with pytest.raises(ConfigError, match="not available locally"):
        embedder_for("local/all-mpnet-base-v2@768", settings)


@pytest.mark.fast
def test_an_unknown_provider_name_is_an_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="TRANSCRIBER='whisperx' is not a known transcriber"):
        transcriber_for(Settings(_env_file=None, transcriber="whisperx"))
    with pytest.raises(ConfigError, match="EMBEDDER='cohere'"):
        provider_registry(Settings(_env_file=None, embedder="cohere")).settings_model()
    with pytest.raises(ConfigError, match="PROVIDER_PLUGINS: cannot import 'no.such.module'"):
        provider_registry(Settings(_env_file=None, provider_plugins=["no.such.module"]))


@pytest.mark.fast
def test_a_plugin_adds_providers_and_reads_its_own_raw_responses() -> None:
    settings = Settings(_env_file=None, provider_plugins=[scripted_providers.PLUGIN], transcriber="scripted",
                        embedder="hashed")
    registry = provider_registry(settings)
    assert {"deepgram", "local", "scripted"} <= set(registry.transcriber_names)
    assert str(registry.settings_model()) == "hashed/words@256"
    result = registry.transcriber().transcribe(REPO_ROOT / "data" / "audio" / "GDR-004.mp3")
    assert registry.parse_raw(result.raw) == result.transcript  # the raw response is read back by its own provider
    assert "Pigou" in " ".join(w.display for w in result.transcript.words)
    # Without the plugin the response is nobody's.
    with pytest.raises(ValueError, match="not one any registered transcriber saved"):
        provider_registry(Settings(_env_file=None)).parse_raw(result.raw)


def test_the_plugin_reaches_a_gdr_process_through_the_environment(settings: Settings, prefect_api: str) -> None:
    """`gdr ingest` and `gdr search` as a user runs them, with the plugin named only in the environment."""
    settings.audio_dir.mkdir(parents=True)
    (settings.audio_dir / "GDR-004.mp3").write_bytes((REPO_ROOT / "data" / "audio" / "GDR-004.mp3").read_bytes())
    catalogue = [e for e in json.loads((REPO_ROOT / "data" / "episodes.json").read_text()) if e["episode_id"] == 4]
    settings.episodes_file.write_text(json.dumps(catalogue))
    env = {**os.environ, **server_environment(settings), "PROVIDER_PLUGINS": scripted_providers.PLUGIN,
           "TRANSCRIBER": "scripted", "EMBEDDER": "hashed", "PREFECT_API_URL": prefect_api,
           "PYTHONPATH": str(REPO_ROOT)}  # where the plugin module is found
    ingest = subprocess.run([str(gdr_executable()), "ingest"], env=env, capture_output=True, text=True, timeout=600)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    found = subprocess.run([str(gdr_executable()), "search", "Pigouvian tax", "-k", "3", "--json"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stdout + found.stderr
    answer = json.loads(found.stdout)
    assert answer["model_id"] == "hashed/words@256"
    assert any("Pigouvian" in hit["text"] for hit in answer["results"])
