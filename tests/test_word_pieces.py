"""Whisper's word pieces read as the words they spell: `' co'` + `'-host'` is "co-host", `' $50'` + `',000'` is
"$50,000", in every text derived from a local transcript (Markdown, SRT, WebVTT, chunks, the stored and searched
text), and episodes stored by the older parser are made again from their cached transcriptions.

Real Whisper base on speech synthesised with espeak-ng (required, as in test_providers_local.py).
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from typer.testing import CliRunner

from gent_disagreement_rag.cli import app
from gent_disagreement_rag.ingest.context import RunContext
from gent_disagreement_rag.ingest.plan import plan_episodes
from gent_disagreement_rag.ingest.sequence import process_episode
from gent_disagreement_rag.ingest.stages import register_catalogue
from gent_disagreement_rag.providers.registry import provider_registry
from gent_disagreement_rag.providers.transcribers.local_whisper import LocalWhisperTranscriber, shipped_whisper_base
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage import costs
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.text.chunking import chunk_transcript
from gent_disagreement_rag.text.exports import render_exports
from gent_disagreement_rag.transcript import Transcript, TranscriptionResult, Word

SPOKEN = ("Welcome back. My co-host and I paid fifty thousand dollars for it. The ticket was one hundred nineteen "
          "dollars. It was a scene-saving idea on the east-west line.")
WHOLE_WORDS = ("co-host", "$50,000", "$119.00", "scene-saving", "east-west")
SPLIT = ("co -host", "$50 ,000", "$119 .00", "scene -saving", "east -west")  # the pieces joined as words
SPEAKERS = {"0": "Ann"}


@pytest.fixture(scope="module")
def whisper_result(tmp_path_factory: pytest.TempPathFactory) -> TranscriptionResult:
    folder = tmp_path_factory.mktemp("pieces")
    wav = folder / "pieces.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), SPOKEN], check=True)
    whisper = LocalWhisperTranscriber(shipped_whisper_base(folder / "models"), models=folder / "models")
    return whisper.transcribe(wav, speakers=1)


def pieces(raw: dict) -> list[str]:
    return [w["word"] for segment in raw["segments"] for w in segment["words"]]


def test_the_recording_gives_word_pieces(whisper_result: TranscriptionResult) -> None:
    """The premise of the tests below: Whisper cut these words into pieces, the later ones without a space."""
    cut = pieces(whisper_result.raw)
    assert " co" in cut and "-host" in cut and ",000" in cut, cut


def test_every_text_of_a_local_transcript_joins_the_pieces(whisper_result: TranscriptionResult) -> None:
    transcript = provider_registry(Settings(_env_file=None)).parse_raw(whisper_result.raw)
    chunks = chunk_transcript(transcript, SPEAKERS)
    rendered = render_exports("pieces", whisper_result.raw, transcript, chunks, "Pieces", SPEAKERS)
    texts = {kind: text for kind, (_, text) in rendered.items() if kind != "raw"}
    texts["chunk text"] = " ".join(c.text for c in chunks)
    assert set(texts) >= {"markdown", "srt", "vtt", "chunks", "chunk text"}, set(texts)
    for kind, text in texts.items():
        text = re.sub(r"(?<=-)\n", "", text).replace("\n", " ")  # captions wrap lines, after a hyphen too
        for word, split in zip(WHOLE_WORDS, SPLIT, strict=True):
            assert split not in text, (kind, split)
            assert word in text, (kind, word)
    assert whisper_result.transcript == transcript  # what the transcribe stage returns is read the same way


def pieces_as_words(raw: dict) -> Transcript:
    """The transcript an earlier version cached: every piece a word of its own."""
    words = [Word(w["word"].strip().lower(), w["start"], w["end"], 0, w["word"].strip(), w["probability"])
             for segment in raw["segments"] for w in segment["words"]]
    return Transcript("local", raw["model"], raw["info"]["duration"], words, raw["options"], raw["info"]["language"])


def stored_text(db: Database, episode_id: str) -> str:
    with db.connection() as conn:
        return " ".join(r[0] for r in conn.execute(
            "SELECT text FROM segments WHERE episode_id = %s ORDER BY position", (episode_id,)))


def test_an_episode_stored_by_the_older_parser_is_made_again_from_its_cached_transcription(
    whisper_result: TranscriptionResult, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An existing user's database: the episode's text was stored with the pieces apart and its transcription is
    in the stage cache as that version parsed it. `gdr status` calls it stale, and the next run re-derives the
    text from the cached raw response, transcribing nothing."""
    environment = {"DATABASE_URL": settings.external_database_url(), "GDR_HOME": str(settings.gdr_home),
                   "EPISODES_FILE": str(settings.episodes_file), "AUDIO_DIR": str(settings.audio_dir),
                   "TRANSCRIPTS_DIR": str(settings.transcripts_dir), "TRANSCRIBER": "local", "EMBEDDER": "local"}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    settings.audio_dir.mkdir(parents=True)
    audio = settings.audio_dir / "P-1.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(audio), SPOKEN], check=True)
    settings.episodes_file.write_text(json.dumps([{"episode_id": "P-1", "file_name": "P-1.wav", "speakers_map": SPEAKERS}]))
    cached = TranscriptionResult(pieces_as_words(whisper_result.raw), whisper_result.raw)

    def from_cache(name, func, *args, cache_key=None):
        return cached if name == "transcribe" else func(*args)

    with RunContext.open(settings) as ctx:
        register_catalogue(ctx)
        [job] = plan_episodes(settings, ctx.db).jobs
        # What the earlier version did: the pieces apart in the stored text, a local transcription in the ledger.
        process_episode(ctx, job, run_stage=lambda name, func, *args, cache_key=None: (
            func(ctx, job, cached.transcript) if name == "format" else from_cache(name, func, *args)))
        costs.record_call(ctx.db, run_id=None, episode_id="P-1", stage="transcribe", provider="local",
                          model=cached.transcript.model, requests=0, audio_seconds=1.0, tokens=0, cost_usd=0.0)
        with ctx.db.connection() as conn:
            conn.execute("UPDATE episodes SET segments_config = segments_config - 'transcript_parser'")
        assert "co -host" in stored_text(ctx.db, "P-1")

        status = CliRunner().invoke(app, ["status", "--json"])
        assert status.exit_code == 0, status.output
        [row] = json.loads(status.stdout)["episodes"]
        assert "parser 1, now 2" in (row["stale"] or ""), row

        [job] = plan_episodes(settings, ctx.db).jobs  # a plain run takes it up again
        process_episode(ctx, job, run_stage=from_cache)
        text = stored_text(ctx.db, "P-1")
        assert "co-host" in text and "$50,000" in text and not any(split in text for split in SPLIT), text
        assert plan_episodes(settings, ctx.db).up_to_date == ["P-1"]
