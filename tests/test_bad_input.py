"""Bad input to `gdr ingest`: a malformed catalogue stops the run before any work; unknown speaker ids,
non-ASCII titles and names; audio files that are empty, truncated, not audio or missing, with Deepgram and with
local Whisper.

Real parts: the `gdr` CLI, Prefect runs on the session's server, Postgres, the Deepgram/OpenAI SDKs against
tests/support/fakeapi.py (the world fixture, tests/support/world.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.fakeapi import (
    LISTEN,
    deepgram_error,
    deepgram_response,
    for_audio,
    sha256_of,
)
from tests.support.world import SAMPLE_SPEECH, World, make_tones, run_flow


@pytest.mark.parametrize(
    ("catalogue", "message"),
    [
        ('[{"episode_id": 1, "file_name": "a.mp3"},]', "not valid JSON: Expecting value at line 1 column 42"),
        ('[{"episode_id": 1, "file_name": "a.mp3"}, {"episode_id": "1", "file_name": "b.mp3"}]',
         "entry 2 (episode_id '1'): field 'episode_id': duplicate of entry 1 ('1')"),
        ('[{"file_name": "a.mp3"}]', "entry 1: field 'episode_id': Field required"),
        ('[{"episode_id": 7}]', "entry 1 (episode_id 7): field 'file_name': required (or give an audio_url)"),
        ('{"episode_id": 7}', "expected a JSON list of episodes, got dict"),
    ],
    ids=["bad-json", "duplicate-id", "missing-id", "missing-file", "not-a-list"],
)
def test_a_malformed_catalogue_stops_gdr_ingest_before_any_work(world: World, catalogue: str, message: str) -> None:
    from typer.testing import CliRunner

    from gent_disagreement_rag.cli import app

    world.write_catalogue(catalogue)
    result = CliRunner().invoke(app, ["ingest"], terminal_width=1000)
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {world.app_env['EPISODES_FILE']}: {message}"
    assert world.api.requests == [] and world.rows() == {}


def test_unknown_speaker_ids_and_non_ascii_titles_and_names(world: World) -> None:
    file_name = "épisode-東京.mp3"
    make_tones([(world.audio_dir / file_name, 3, 440)])
    title = "Ça coûte cher — 経済の話 🎙"
    world.write_catalogue([{"episode_id": "U-1", "file_name": file_name, "title": title,
                            "speakers_map": {"0": "Zoë Ångström", "1": "李雷", "9": "Nobody"}}])
    turns = [(0, "Bienvenue au café, naïve question d'abord."), (1, "東京 の 経済 は 強い です."),
             (2, "A third voice nobody named.")]
    world.api.add_audio(world.audio_dir / file_name, response=deepgram_response(turns, duration=3.0))

    assert run_flow().is_completed()

    speakers = world.sql("SELECT speaker, text FROM segments WHERE episode_id = 'U-1' ORDER BY position")
    assert {s for s, _ in speakers} == {"Zoë Ångström", "李雷", "Speaker 2"}  # an unnamed id is "Speaker N"
    assert any("東京" in text for _, text in speakers)
    markdown = (world.transcripts_dir / "épisode-東京.md").read_text(encoding="utf-8")
    assert title in markdown and "Zoë Ångström" in markdown and "李雷" in markdown and "Speaker 2" in markdown
    assert world.rows()["U-1"].title == title
    world.assert_consistent()


def _bad_audio(world: World) -> dict[str, Path]:
    """The same kinds of bad audio files for both transcribers."""
    audio = world.audio_dir
    files = {"B-empty": audio / "B-empty.mp3", "B-text": audio / "B-text.mp3", "B-zero": audio / "B-zero.mp3"}
    files["B-empty"].write_bytes(b"")
    files["B-text"].write_text("These are show notes, not audio.\n" * 50)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0",
                    "-b:a", "32k", str(files["B-zero"])], check=True)  # a header and no audio frame
    entries = [{"episode_id": "B-missing", "file_name": "B-missing.mp3"}]
    entries += [{"episode_id": e, "file_name": p.name} for e, p in files.items()]
    entries.append({"episode_id": "B-trunc", "file_name": "B-trunc.mp3"})
    entries.append({"episode_id": "B-ok", "file_name": "B-ok.mp3"})
    world.write_catalogue(entries)
    return files


def test_bad_audio_files_with_deepgram(world: World) -> None:
    files = _bad_audio(world)
    make_tones([(world.audio("B-ok"), 3, 300), (world.tmp / "ten.mp3", 10, 500)])
    whole = (world.tmp / "ten.mp3").read_bytes()
    world.audio("B-trunc").write_bytes(whole[: len(whole) * 4 // 10])  # cut mid-frame at 40 %
    # What Deepgram answers for these (the fake answers anything, so it is told).
    world.api.enqueue(LISTEN, deepgram_error(400, "Bad Request", "corrupt or unsupported data"),
                      when=for_audio(files["B-text"]))
    world.api.add_audio(files["B-zero"], response=deepgram_response([], duration=0.0))

    state = run_flow(max_parallel=3)

    assert state.is_failed() and "2/6 episodes processed" in state.message, state.message
    rows = world.rows()
    episodes_file = world.app_env["EPISODES_FILE"]
    assert rows["B-missing"].last_error == (f"{episodes_file}: episode B-missing: field 'file_name': "
                                            f"audio file not found: {world.audio('B-missing')}")
    assert rows["B-empty"].last_error == (f"{episodes_file}: episode B-empty: field 'file_name': "
                                          f"audio file is empty (0 bytes): {files['B-empty']}")
    assert rows["B-text"].last_error == (
        "PermanentProviderError: Deepgram answered HTTP 400 (Bad Request): corrupt or unsupported data")
    assert rows["B-zero"].last_error.startswith("QualityGateError: episode B-zero: transcript failed the quality gate: "
                                                "no words recognised")
    assert rows["B-trunc"].status == rows["B-ok"].status == "processed"
    [upload] = [r for r in world.api.requests_to(LISTEN) if sha256_of(r.body) == sha256_of(world.audio("B-trunc"))]
    assert len(upload.body) == len(whole) * 4 // 10  # sent as it is: what is decodable is the provider's call
    # The missing and empty files were never uploaded; nothing was retried.
    assert world.listen_counts() == {"B-text": 1, "B-zero": 1, "B-trunc": 1, "B-ok": 1}
    world.assert_consistent()


@pytest.mark.slow
def test_bad_audio_files_with_local_whisper(world: World, monkeypatch) -> None:
    monkeypatch.setenv("TRANSCRIBER", "local")
    files = _bad_audio(world)
    shutil.copyfile(SAMPLE_SPEECH, world.audio("B-ok"))
    speech = SAMPLE_SPEECH.read_bytes()
    world.audio("B-trunc").write_bytes(speech[: len(speech) // 5])  # the first ~26 s, cut mid-frame

    state = run_flow(episode_ids=["B-missing", "B-empty", "B-text", "B-zero", "B-trunc"], max_parallel=2)

    assert state.is_failed() and "1/5 episodes processed" in state.message, state.message
    rows = world.rows()
    assert rows["B-missing"].last_error.endswith(f"audio file not found: {world.audio('B-missing')}")
    assert rows["B-empty"].last_error.endswith(f"audio file is empty (0 bytes): {files['B-empty']}")
    assert rows["B-text"].last_error.startswith(f"UndecodableAudioError: {files['B-text'].resolve()}: cannot decode the audio")
    assert rows["B-zero"].last_error.startswith(f"UndecodableAudioError: {files['B-zero'].resolve()}: cannot decode the audio")
    assert rows["B-trunc"].status == "processed" and 20 < rows["B-trunc"].duration_seconds < 30
    words = " ".join(text for (text,) in world.sql("SELECT text FROM segments WHERE episode_id = 'B-trunc'")).lower()
    assert "bee" in words  # the episode opens on urban beekeeping
    assert world.api.requests_to(LISTEN) == []
    world.assert_consistent()
