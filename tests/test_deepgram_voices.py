"""The voice library with Deepgram: the speaker embeddings come from the cached audio over Deepgram's own speaker
turns. A first episode's speakers_map enrolls both voices; in a second, Deepgram numbers the same two voices the
other way round (as it does, by first appearance) and no map is given: each is named by its voice."""

from __future__ import annotations

import pytest

from gent_disagreement_rag.storage.database import Database
from tests.support.builders import run_ingest
from tests.support.voices import ANN, BOB, deepgram_turns, dialogue, voice_catalogue


@pytest.mark.timeout(1800)  # two ingest runs, Whisper or the ECAPA model on a shared 2-core machine
def test_deepgram_speakers_are_named_by_their_voice(settings, fake_api, monkeypatch, prefect_api) -> None:
    episodes = {"ep1": (dialogue(ANN, BOB), {"0": "Ann Lee", "1": "Bob Stone"}), "ep2": (dialogue(BOB, ANN, offset=2), None)}
    timed = voice_catalogue(settings, fake_api, monkeypatch, {"ep1": episodes["ep1"]})
    fake_api.add_audio(settings.audio_dir / "ep1.wav", response=deepgram_turns(timed["ep1"], {ANN: 0, BOB: 1}))
    assert run_ingest().is_completed()
    timed = voice_catalogue(settings, fake_api, monkeypatch, episodes)
    fake_api.add_audio(settings.audio_dir / "ep2.wav", response=deepgram_turns(timed["ep2"], {BOB: 0, ANN: 1}))
    assert run_ingest().is_completed()

    with Database.from_settings(settings) as db, db.connection() as conn:
        rows = conn.execute("SELECT speaker, text FROM segments WHERE episode_id = 'ep2' ORDER BY position").fetchall()
    bob_first_line = timed["ep2"][0][3].split(".")[0]
    assert {speaker for speaker, _ in rows} == {"Ann Lee", "Bob Stone"}
    assert next(speaker for speaker, text in rows if bob_first_line in text) == "Bob Stone"
