"""The publisher's transcript and chapters (Podcasting 2.0 `podcast:transcript`, `podcast:chapters`), read from a
local feed served on 127.0.0.1, through the real ingest flow against the fake Deepgram/OpenAI API.

Episodes whose feed links a usable WebVTT (voice tags), SRT or JSON transcript make no provider request and keep
the publisher's speakers and times; a 404, a malformed file, an HTML-only link and a transcript covering a fraction
of the audio are transcribed, with the reason recorded; a rerun fetches nothing; chapters show on search hits and
are searched; the dry run and the ledger say which episodes are read from the publisher and what that saves.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from gent_disagreement_rag.cli import app
from gent_disagreement_rag.cli.progress import IngestProgress
from gent_disagreement_rag.ingest.context import RunContext
from gent_disagreement_rag.providers.audio import audio_seconds
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.text.chunking import chunk_transcript
from gent_disagreement_rag.transcript import Transcript, Word
from tests.support.builders import app_environment, make_audio, run_ingest
from tests.support.fakeapi import LISTEN, FakeAPI
from tests.support.feed_server import FeedServer, Item, feed_server

VTT = """WEBVTT

00:00:00.500 --> 00:00:04.000
<v Carla Diaz>Welcome back to the show, everyone, it is good to see you.</v>

00:00:04.000 --> 00:00:08.000
<v Dev Patel>Glad to be here again, Carla, thank you for having me.</v>

00:00:09.000 --> 00:00:13.000
<v Carla Diaz>Let us talk about import duties on exotic building materials.</v>

00:00:13.000 --> 00:00:17.000
<v Dev Patel>Those duties are a terrible idea for everyone who builds.</v>
"""
SRT = """1
00:00:00,800 --> 00:00:05,000
Carla Diaz: The central bank raised interest rates again this month.

2
00:00:05,500 --> 00:00:10,000
Dev Patel: Mortgage holders will certainly feel it by the summer.
"""
JSON_TRANSCRIPT = {"version": "1.0.0", "segments": [
    {"speaker": "Erin Wu", "startTime": 1.0, "endTime": 6.0, "body": "Shipping containers are stuck at the port."},
    {"speaker": "Dev Patel", "startTime": 6.5, "endTime": 12.0, "body": "Freight prices doubled since the spring."},
]}
CHAPTERS = {"version": "1.2.0", "chapters": [
    {"startTime": 0, "title": "Cold open"},
    {"startTime": 8.5, "title": "Quasicrystal tariffs"},
    {"startTime": 16, "title": "Sponsor", "toc": False},
]}
HTML = ("<html><head><title>Episode 6</title><style>p {}</style></head><body><h1>Transcript</h1><p>Carla Diaz: Tariffs on steel are back.</p>"
        "<p>Dev Patel: And so are the lobbyists, Carla.</p></body></html>")
MALFORMED_VTT = "00:00:01.000 --> 00:00:04.000\n<v Carla Diaz>No WEBVTT header above me.\n"
PRICE = 0.0043  # DEEPGRAM_PRICE_PER_MINUTE's default


@pytest.fixture
def show(settings: Settings, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FeedServer]:
    """Seven episodes: a VTT with voice tags (and chapters), an SRT, a JSON transcript, a 404 link, a malformed
    VTT, an HTML-only link (times estimated), and a JSON transcript covering 12 s of 70 s of audio."""
    with feed_server() as host:
        seconds = {1: 18, 2: 19, 3: 18, 4: 17, 5: 16, 6: 15, 7: 70}
        for n, length in seconds.items():
            host.files[f"/audio/{n}.mp3"] = make_audio(tmp_path / "made" / f"{n}.mp3", length, 300 + 40 * n).read_bytes()
        host.files |= {"/t/1.vtt": VTT.encode(), "/t/2.srt": SRT.encode(), "/t/3.json": json.dumps(JSON_TRANSCRIPT).encode(),
                       "/t/5.vtt": MALFORMED_VTT.encode(), "/t/6.html": HTML.encode(),
                       "/t/7.json": json.dumps(JSON_TRANSCRIPT).encode(), "/c/1.json": json.dumps(CHAPTERS).encode()}
        links = {1: ("/t/1.vtt", "text/vtt"), 2: ("/t/2.srt", "application/x-subrip"), 3: ("/t/3.json", "application/json"),
                 4: ("/t/4.vtt", "text/vtt"), 5: ("/t/5.vtt", "text/vtt"), 6: ("/t/6.html", "text/html"),
                 7: ("/t/7.json", "application/json")}
        host.items = [Item(f"tag:pub,2025:{n}", f"Episode {n}", f"/audio/{n}.mp3", number=n, duration=str(seconds[n]),
                           transcripts=(links[n],), chapters="/c/1.json" if n == 1 else None) for n in seconds]
        env = {**app_environment(settings, fake_api), "FEED_URL": host.url + "/feed.xml",
               "DEFAULT_SPEAKERS_MAP": json.dumps({"0": "Ann", "1": "Bob"})}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield host


def gdr(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def publisher_gets(host: FeedServer) -> list[str]:
    return [path for path, _ in host.requests if path.startswith(("/t/", "/c/"))]


def segments(settings: Settings, episode_id: str) -> list[tuple[str, float, float, str, str | None]]:
    with Database.from_settings(settings) as db, db.connection() as conn:
        return conn.execute("SELECT speaker, start_seconds, end_seconds, text, chapter FROM segments "
                            "WHERE episode_id = %s ORDER BY position", (episode_id,)).fetchall()


def test_publisher_transcripts_replace_transcription_and_broken_ones_fall_back_with_the_reason(
    settings: Settings, show: FeedServer, fake_api: FakeAPI, prefect_api: str
) -> None:
    progress = IngestProgress(Console(width=200))  # what `gdr ingest` shows, fed by the run as it goes
    with RunContext.open(Settings(), progress.on_progress) as ctx, ctx.activated():
        state = run_ingest()
    assert state.is_completed(), state.message

    # Only the three without a usable transcript went to Deepgram (the audio each request carried, by hash).
    sent = sorted(hashlib.sha256(r.body).hexdigest() for r in fake_api.requests_to(LISTEN))
    assert sent == sorted(hashlib.sha256(show.files[f"/audio/{n}.mp3"]).hexdigest() for n in (4, 5, 7))

    status = {e["episode_id"]: e for e in json.loads(gdr("status", "--json"))["episodes"]}
    assert {e: (r["status"], r["transcript_source"]) for e, r in status.items()} == {
        **{f"feed-{n}": ("processed", "publisher") for n in (1, 2, 3, 6)},
        **{f"feed-{n}": ("processed", "transcriber") for n in (4, 5, 7)},
    }
    notes = {e: status[e]["transcript_note"] for e in status}
    assert notes["feed-1"] is None and notes["feed-3"] is None
    assert f"transcript {show.url}/t/4.vtt: HTTP 404" in notes["feed-4"]
    assert f"transcript {show.url}/t/5.vtt: not valid VTT" in notes["feed-5"]
    assert "only an HTML transcript, which has no times: its words are spread evenly over the audio" in notes["feed-6"]
    assert "fails the coverage check: transcript ends at 12.0 s of 70.0 s (coverage 17% < 80%)" in notes["feed-7"]
    assert all(notes[f"feed-{n}"].endswith("transcribed instead") for n in (4, 5, 7))
    assert dict(progress.transcript_notes()) == {e: notes[e] for e in ("feed-4", "feed-5", "feed-6", "feed-7")}
    shown = Console(record=True, width=200)
    shown.print(progress.summary_table())
    summary = {line.split("│")[1].strip(): line for line in shown.export_text().splitlines() if "│ feed-" in line}
    assert all("publisher (" in summary[f"feed-{n}"] for n in (1, 2, 3, 6))
    assert "publisher (application/x-subrip)" in summary["feed-2"]
    assert all("deepgram" in summary[f"feed-{n}"] for n in (4, 5, 7))

    # The publisher's speakers (over DEFAULT_SPEAKERS_MAP's Ann and Bob) and times.
    vtt = segments(settings, "feed-1")
    assert {s[0] for s in vtt} == {"Carla Diaz", "Dev Patel"} and vtt[0][1] == 0.5 and vtt[-1][2] == 17.0
    duties = next(s for s in vtt if "import duties" in s[3])
    assert duties[:2] == ("Carla Diaz", 9.0) and duties[4] == "Quasicrystal tariffs"
    assert vtt[0][4] == "Cold open"
    srt = segments(settings, "feed-2")
    assert [(s[0], s[1], s[2]) for s in srt] == [("Carla Diaz", 0.8, 5.0), ("Dev Patel", 5.5, 10.0)]
    assert srt[0][3] == "The central bank raised interest rates again this month."
    assert [(s[0], s[1], s[2]) for s in segments(settings, "feed-3")] == [("Erin Wu", 1.0, 6.0), ("Dev Patel", 6.5, 12.0)]
    assert {s[0] for s in segments(settings, "feed-4")} <= {"Ann", "Bob"}  # transcribed: the map names the speakers
    html = segments(settings, "feed-6")  # the paragraphs' speakers, their times shared out over the 15 s of audio
    assert [(s[0], s[3]) for s in html] == [("Carla Diaz", "Tariffs on steel are back."),
                                           ("Dev Patel", "And so are the lobbyists, Carla.")]
    assert html[0][1] == 0.0 and html[1][2] == pytest.approx(audio_seconds(show.files["/audio/6.mp3"]), abs=0.01)

    # The ledger: no request and no cost for the publisher's three, and the transcription they saved.
    with Database.from_settings(settings) as db, db.connection() as conn:
        ledger = conn.execute("SELECT episode_id, requests, cost_usd::float8, saved_usd::float8 FROM provider_calls "
                              "WHERE provider = 'publisher' ORDER BY episode_id").fetchall()
    saved = {f"feed-{n}": audio_seconds(show.files[f"/audio/{n}.mp3"]) / 60 * PRICE for n in (1, 2, 3, 6)}
    assert [(e, r, c) for e, r, c, _ in ledger] == [(f"feed-{n}", 0, 0.0) for n in (1, 2, 3, 6)]
    assert {e: s for e, *_, s in ledger} == pytest.approx(saved, abs=1e-6)
    total = json.loads(gdr("costs", "--json"))["total"]
    assert total["publisher_transcripts"] == 4 and total["saved_usd"] == pytest.approx(sum(saved.values()), abs=1e-5)

    # A rerun: the feed is read, and nothing else is fetched or sent anywhere.
    provider_requests, fetched = len(fake_api.requests), len(show.requests)
    assert run_ingest().is_completed()
    assert len(fake_api.requests) == provider_requests
    assert [path for path, _ in show.requests[fetched:]] == ["/feed.xml"]

    # Search shows the chapter, and a chapter's title finds the chunks under it (the text side).
    hits = json.loads(gdr("search", "quasicrystal", "--mode", "text", "--json"))["results"]
    assert hits and {h["episode_id"] for h in hits} == {"feed-1"}
    assert {h["chapter"] for h in hits} == {"Quasicrystal tariffs"}
    assert all("quasicrystal" not in h["text"].lower() for h in hits)  # found by the chapter's title alone
    hybrid = json.loads(gdr("search", "quasicrystal import duties on exotic building materials", "--json"))["results"]
    assert hybrid[0]["episode_id"] == "feed-1" and hybrid[0]["chapter"] == "Quasicrystal tariffs"
    table = gdr("search", "import duties exotic materials", "--mode", "text", "-k", "1")
    assert "Quasicrystal tariffs" in table


def test_dry_run_names_the_publishers_episodes_and_the_money_not_spent(
    settings: Settings, show: FeedServer, fake_api: FakeAPI
) -> None:
    output = gdr("ingest", "--dry-run")
    assert fake_api.requests == [] and publisher_gets(show) == []  # nothing fetched to decide
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in output.splitlines()
            if line.count("│") >= 8}
    one = 18 / 60
    assert rows["feed-1"][4:] == ["publisher (text/vtt)", f"{one * PRICE:.4f}"]
    assert rows["feed-1"][3] == f"{round(18 * 2.7 * 1.3) / 1e6 * 0.02:.4f}"  # embedding only
    assert rows["feed-6"][4:] == ["publisher (text/html)", f"{15 / 60 * PRICE:.4f}"]  # HTML alone: read, times estimated
    publisher_minutes = (18 + 19 + 18 + 17 + 16 + 15 + 70) / 60  # every link counts until it is fetched
    assert rows["total"][4:] == ["7 from the publisher", f"{publisher_minutes * PRICE:.4f}"]
    assert "feed-6: the feed offers only an HTML transcript, which has no times" in output


def test_always_transcribe_makes_publisher_episodes_stale_and_transcribes_them(
    settings: Settings, show: FeedServer, fake_api: FakeAPI, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    show.items = show.items[:2]
    assert run_ingest().is_completed()
    assert fake_api.requests_to(LISTEN) == []
    monkeypatch.setenv("FEED_TRANSCRIPTS", "transcribe")
    stale = {e["episode_id"]: e["stale"] for e in json.loads(gdr("status", "--json"))["episodes"]}
    assert all("FEED_TRANSCRIPTS=transcribe" in stale[e] for e in ("feed-1", "feed-2")), stale
    assert "deepgram" in gdr("ingest", "--dry-run")
    fetched = len(publisher_gets(show))
    assert run_ingest().is_completed()
    assert len(fake_api.requests_to(LISTEN)) == 2 and len(publisher_gets(show)) == fetched + 1  # chapters only
    status = {e["episode_id"]: e for e in json.loads(gdr("status", "--json"))["episodes"]}
    assert {e: (s["transcript_source"], s["stale"]) for e, s in status.items()} == {
        "feed-1": ("transcriber", None), "feed-2": ("transcriber", None)}
    assert {s[0] for s in segments(settings, "feed-1")} <= {"Ann", "Bob"}
    assert {s[4] for s in segments(settings, "feed-1")} >= {"Cold open"}  # chapters stay with transcription


def test_a_transcript_cached_before_speaker_names_existed_still_loads_and_names_by_the_map() -> None:
    """The stage cache holds pickled Transcripts; one pickled by the previous version has no `speaker_names`
    in its state, and must load (an upgrade re-chunks from the cache instead of transcribing again)."""
    said = [(0, "Welcome back to the show, everyone."), (1, "Glad to be here again, thank you for having me.")]
    words = [Word(w, i * 0.5, i * 0.5 + 0.4, speaker) for i, (speaker, w) in
             enumerate((speaker, w) for speaker, text in said for w in text.split())]
    cached = Transcript("deepgram", "nova-3", 10.0, words)

    class PreviousVersion(pickle.Pickler):  # pickles a Transcript as the class without speaker_names did
        def reducer_override(self, obj: object) -> object:
            if type(obj) is not Transcript:
                return NotImplemented
            rebuild, args, (_, slots) = obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)[:3]
            return rebuild, args, (None, {name: value for name, value in slots.items() if name != "speaker_names"})

    record = io.BytesIO()
    PreviousVersion(record, pickle.HIGHEST_PROTOCOL).dump(cached)
    loaded = pickle.loads(record.getvalue())
    assert loaded.speaker_names is None and loaded.words == cached.words
    assert {c.speaker for c in chunk_transcript(loaded, {"0": "Ann", "1": "Bob"})} == {"Ann", "Bob"}
    assert pickle.loads(pickle.dumps(loaded)).names({"0": "Ann"}) == {"0": "Ann"}
