"""`gdr speakers name` on a stored episode: the stranger ("Speaker 1") becomes "Cara Moss" in search results, the
chat views and the export files, without transcribing again (no request reaches the transcriber), and the
library lists the new voice."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gent_disagreement_rag.cli import app
from gent_disagreement_rag.search import search
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import run_ingest
from tests.support.voices import ANN, CARA, deepgram_turns, voice_catalogue

LISTEN = "/v1/listen"


@pytest.mark.timeout(1800)  # two ingest runs, Whisper or the ECAPA model on a shared 2-core machine
def test_naming_a_speaker_renames_search_results_chat_views_and_exports(settings, fake_api, monkeypatch, prefect_api) -> None:
    turns = [(ANN, "Welcome back to the show. Today we talk about the price of housing in large cities."),
             (CARA, "Thank you for having me. I have studied rents in Glasgow and Edinburgh for twenty years."),
             (ANN, "What did you find about the rents compared with wages over that time?"),
             (CARA, "Rents climbed faster than wages in every decade, and the gap widened after the crisis.")]
    timed = voice_catalogue(settings, fake_api, monkeypatch, {"ep1": (turns, None)})
    fake_api.add_audio(settings.audio_dir / "ep1.wav", response=deepgram_turns(timed["ep1"], {ANN: 0, CARA: 1}))
    assert run_ingest().is_completed()
    settings = Settings(_env_file=None)  # as `gdr` reads them: the fake OpenAI embeds the queries
    with Database.from_settings(settings) as db:
        before = search("rents in Glasgow and Edinburgh", k=1, settings=settings, db=db)[0]
    assert before.speaker == "Speaker 1"
    requests = len(fake_api.requests_to(LISTEN))

    result = CliRunner().invoke(app, ["speakers", "name", "ep1", "1", "Cara Moss"])
    assert result.exit_code == 0, result.output
    assert "Speaker 1 -> Cara Moss" in result.output

    with Database.from_settings(settings) as db:
        after = search("rents in Glasgow and Edinburgh", k=1, settings=settings, db=db)[0]
        with db.connection() as conn:
            chat = {r[0] for r in conn.execute("SELECT sp.name FROM chat.transcript_segments t "
                                               "JOIN chat.speakers sp ON sp.id = t.speaker_id")}
    assert after.speaker == "Cara Moss" and after.text == before.text
    assert chat == {"Speaker 0", "Cara Moss"}
    for suffix in (".md", ".srt", ".vtt", ".chunks.json"):
        text = (settings.transcripts_dir / f"ep1{suffix}").read_text()
        assert "Cara Moss" in text and "Speaker 1" not in text, suffix
    assert len(fake_api.requests_to(LISTEN)) == requests  # nothing transcribed again
    listed = CliRunner().invoke(app, ["speakers", "list"])
    assert listed.exit_code == 0 and "Cara Moss" in listed.output
