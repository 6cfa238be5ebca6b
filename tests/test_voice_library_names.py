"""The voice library on the offline path (local Whisper, its diarizer, MiniLM): an episode whose speakers_map names
its two voices enrolls them; a later episode of the same voices without a map gets their names; another with one
of them and a voice never named keeps "Speaker N" for the stranger (never someone else's name)."""

from __future__ import annotations

import json

import pytest

from gent_disagreement_rag.storage import voices as library
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import run_ingest
from tests.support.voices import ANN, BOB, CARA, dialogue, voice_catalogue


def speakers_of(db: Database, episode_id: str) -> set[str]:
    with db.connection() as conn:
        return {r[0] for r in conn.execute("SELECT DISTINCT speaker FROM segments WHERE episode_id = %s", (episode_id,))}


@pytest.mark.timeout(1800)  # two ingest runs, Whisper or the ECAPA model on a shared 2-core machine
def test_named_voices_are_recognised_and_a_stranger_stays_anonymous(settings, fake_api, monkeypatch, prefect_api) -> None:
    local = {"TRANSCRIBER": "local", "EMBEDDER": "local"}
    named = {"ep1": (dialogue(ANN, BOB), {"0": "Ann Lee", "1": "Bob Stone"})}
    voice_catalogue(settings, fake_api, monkeypatch, named, **local)
    assert run_ingest().is_completed()
    later = {"ep2": (dialogue(BOB, ANN, offset=3), None), "ep3": (dialogue(ANN, CARA, offset=5), None)}
    voice_catalogue(settings, fake_api, monkeypatch, named | later, **local)
    assert run_ingest().is_completed()

    with Database.from_settings(settings) as db:
        assert speakers_of(db, "ep1") == {"Ann Lee", "Bob Stone"}
        assert speakers_of(db, "ep2") == {"Ann Lee", "Bob Stone"}
        assert speakers_of(db, "ep3") == {"Ann Lee", "Speaker 1"}
        voices = {v.name: v for v in library.list_voices(db)}
    assert set(voices) == {"Ann Lee", "Bob Stone"} and voices["Ann Lee"].episodes == 3 and voices["Bob Stone"].episodes == 2
    markdown = (settings.transcripts_dir / "ep3.md").read_text()
    assert "Ann Lee" in markdown and "Speaker 1" in markdown and "Bob Stone" not in markdown
    assert json.loads(settings.episodes_file.read_text())[1].get("speakers_map") is None
