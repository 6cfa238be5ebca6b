"""`gdr format` re-chunks a saved raw response exactly as ingest's format stage chunks it with the same
settings: both build the stage's configuration (ingest/config.py) from them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from gent_disagreement_rag.ingest.config import FormatConfig
from gent_disagreement_rag.ingest.context import RunContext
from gent_disagreement_rag.ingest.plan import EpisodeJob
from gent_disagreement_rag.ingest.stages import format_episode
from gent_disagreement_rag.providers.registry import provider_registry
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.text.chunking import ChunkerConfig, chunk_transcript
from tests.support.builders import DEEPGRAM_FIXTURES_DIR
from tests.support.servers import gdr_executable

PHONE = DEEPGRAM_FIXTURES_DIR / "phone_call_463s_2spk_nova3_utterances.json"
SPEAKERS = {"0": "Caller", "1": "Agent"}


def test_gdr_format_makes_the_chunks_ingest_makes(tmp_path: Path, settings: Settings, db: Database) -> None:
    raw_path = tmp_path / "call.raw.json"
    shutil.copyfile(PHONE, raw_path)
    # A short stretch of audio per chunk: before, `gdr format` took only the token budget and made 56 chunks
    # (the longest 28.7 s) where ingest made 123.
    env = {**os.environ, "CHUNK_MAX_SECONDS": "5", "CHUNK_MAX_TOKENS": "120"}
    done = subprocess.run([str(gdr_executable()), "format", str(raw_path), "--speakers-map", json.dumps(SPEAKERS)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    formatted = json.loads((tmp_path / "call.chunks.json").read_text(encoding="utf-8"))

    chosen = settings.model_copy(update={"chunk_max_seconds": 5.0, "chunk_max_tokens": 120})
    transcript = provider_registry(chosen).parse_raw(json.loads(PHONE.read_text(encoding="utf-8")))
    job = EpisodeJob("call", "call", "call", raw_path, "0" * 64, SPEAKERS)
    ingested = format_episode(RunContext(chosen, db), job, transcript).chunks

    assert [(c["start"], c["end"], c["speaker"], c["text"]) for c in formatted] == [
        (c.start, c.end, c.speaker, c.text) for c in ingested]
    # The audio limit mattered: the token budget alone makes fewer, longer chunks.
    assert len(ingested) > len(chunk_transcript(transcript, SPEAKERS, config=ChunkerConfig(max_tokens=120)))
    # The same configuration the episode's stored segments record.
    assert FormatConfig.from_settings(chosen, SPEAKERS).stored()["chunker"]["max_seconds"] == 5.0
