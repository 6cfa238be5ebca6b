"""Podcast feeds, enclosure downloads, the cost ledger's commands and `gdr ingest --dry-run`, offline.

A local podcast host (`FeedServer`) serves a real-shaped RSS 2.0 feed (itunes: and podcast: tags)
and mp3 enclosures with Range/If-Range support and injectable faults.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gent_disagreement_rag.cli import app
from gent_disagreement_rag.errors import PermanentProviderError, TransientProviderError
from gent_disagreement_rag.ingest.plan import plan_episodes
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.sources.feeds import FeedItem, download_enclosure, parse_feed
from gent_disagreement_rag.sources.publisher import TranscriptLink
from gent_disagreement_rag.storage import costs as cost_store
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import app_environment, make_audio, run_ingest
from tests.support.fakeapi import LISTEN, FakeAPI
from tests.support.feed_server import FeedServer, Item, feed_server
from tests.support.world import statuses

SPEAKERS = {"0": "Ann", "1": "Bob"}


@pytest.fixture
def host() -> Iterator[FeedServer]:
    with feed_server() as feed:
        yield feed


def mp3(tmp_path: Path, name: str, seconds: float, frequency: int) -> bytes:
    return make_audio(tmp_path / "made" / name, seconds, frequency).read_bytes()


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.fast
def test_parse_feed_reads_itunes_and_podcast_tags(host: FeedServer) -> None:
    host.files["/audio/ep1.mp3"] = b"x" * 5000
    host.items = [
        Item("guid-1", "Rates & Risk", "/audio/ep1.mp3", number=1, duration="1:02:03", published=date(2024, 3, 5),
             transcripts=(("/t/1.srt", "application/x-subrip"), ("/t/1.vtt", "text/vtt")), chapters="/c/1.json"),
        Item("guid-2", "Trailer", "/audio/trailer.mp3", duration="95"),
        Item("guid-1", "A duplicate guid", "/audio/dup.mp3"),
    ]
    items = parse_feed(host.url + "/feed.xml")
    assert items == parse_feed(host.rss().encode())
    first, trailer = items  # the enclosure-less post and the duplicate guid are dropped
    assert first == FeedItem(
        guid="guid-1", title="Rates & Risk", published=date(2024, 3, 5), enclosure_url=host.url + "/audio/ep1.mp3",
        enclosure_length=5000, enclosure_type="audio/mpeg", duration_seconds=3723.0, episode_number=1,
        transcripts=(TranscriptLink(host.url + "/t/1.srt", "application/x-subrip"),
                     TranscriptLink(host.url + "/t/1.vtt", "text/vtt")),  # both: feedparser alone keeps the last
        chapters_url=host.url + "/c/1.json",
    )
    assert (trailer.duration_seconds, trailer.episode_number) == (95.0, None)
    assert first.hashed_id == "feed-" + hashlib.sha1(b"guid-1").hexdigest()[:12]
    assert (first.readable_id, trailer.readable_id) == ("feed-1", "feed-2024-03-01-trailer")
    assert first.file_name("feed-1").startswith("feed-1-") and first.file_name("feed-1").endswith(".mp3")
    changed = parse_feed(host.rss().encode().replace(b'length="5000"', b'length="5001"'))[0]
    assert changed.readable_id == first.readable_id and changed.file_name("x") != first.file_name("x")


@pytest.mark.fast
def test_a_broken_feed_is_a_clear_permanent_error(host: FeedServer) -> None:
    with pytest.raises(PermanentProviderError, match=r"feed http://127\.0\.0\.1:\d+/nope\.xml: HTTP 404"):
        parse_feed(host.url + "/nope.xml")
    with pytest.raises(PermanentProviderError, match="not an RSS or Atom feed"):
        parse_feed(b"<html><body>not a feed")


# --- downloads --------------------------------------------------------------------------------


@pytest.mark.fast
def test_download_resumes_a_partial_file(host: FeedServer, tmp_path: Path) -> None:
    data = bytes(range(256)) * 400
    host.files["/audio/ep.mp3"] = data
    host.faults["/audio/ep.mp3"].append(("cut", 30_000))
    dest = tmp_path / "audio" / "ep.mp3"
    with pytest.raises(TransientProviderError, match="RemoteProtocolError"):
        download_enclosure(host.url + "/audio/ep.mp3", dest, max_bytes=10**6, expected_size=len(data))
    assert not dest.exists() and dest.with_name("ep.mp3.part").stat().st_size == 30_000
    path, sha256, size = download_enclosure(host.url + "/audio/ep.mp3", dest, max_bytes=10**6, expected_size=len(data))
    assert (path, size, sha256) == (dest, len(data), hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data and not list(dest.parent.glob("*.part*"))
    second = host.gets("/audio/ep.mp3")[1]
    assert second["range"] == "bytes=30000-" and second["if-range"].startswith('"')


@pytest.mark.fast
def test_download_starts_again_when_the_server_ignores_range_or_the_file_changed(host: FeedServer, tmp_path: Path) -> None:
    url, dest = host.url + "/audio/ep.mp3", tmp_path / "ep.mp3"
    host.files["/audio/ep.mp3"] = b"old" * 10_000
    host.faults["/audio/ep.mp3"].append(("cut", 1000))
    with pytest.raises(TransientProviderError):
        download_enclosure(url, dest, max_bytes=10**6)
    host.files["/audio/ep.mp3"] = new = b"new" * 12_000  # If-Range no longer matches: the whole new file comes back
    assert download_enclosure(url, dest, max_bytes=10**6).sha256 == hashlib.sha256(new).hexdigest()
    assert dest.read_bytes() == new

    host.ignore_range = True
    dest.unlink()
    host.faults["/audio/ep.mp3"].append(("cut", 1000))
    with pytest.raises(TransientProviderError):
        download_enclosure(url, dest, max_bytes=10**6)
    assert download_enclosure(url, dest, max_bytes=10**6).size == len(new) and dest.read_bytes() == new


@pytest.mark.fast
def test_download_rejects_oversize_files(host: FeedServer, tmp_path: Path) -> None:
    host.files["/audio/big.mp3"] = b"x" * 50_000
    url, dest = host.url + "/audio/big.mp3", tmp_path / "big.mp3"
    with pytest.raises(PermanentProviderError, match="larger than the limit of 10000 bytes"):
        download_enclosure(url, dest, max_bytes=10_000, expected_size=50_000)  # the feed says so: no request
    assert host.requests == []
    with pytest.raises(PermanentProviderError, match="larger than the limit"):
        download_enclosure(url, dest, max_bytes=10_000)  # the server's Content-Length says so
    host.faults["/audio/big.mp3"].append("no-length")
    with pytest.raises(PermanentProviderError, match="larger than the limit"):
        download_enclosure(url, dest, max_bytes=10_000)  # counted while streaming
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fast
def test_download_errors_are_classified_and_name_the_url_without_secrets(host: FeedServer, tmp_path: Path) -> None:
    secret_url = host.url.replace("http://", "http://user:hunter2@") + "/audio/gone.mp3?token=s3cr3t"
    with pytest.raises(PermanentProviderError) as permanent:
        download_enclosure(secret_url, tmp_path / "gone.mp3", max_bytes=10**6)
    assert str(permanent.value) == f"download {host.url}/audio/gone.mp3: HTTP 404"
    host.files["/audio/busy.mp3"] = b"x"
    host.faults["/audio/busy.mp3"].append(503)
    with pytest.raises(TransientProviderError, match="HTTP 503") as transient:
        download_enclosure(host.url + "/audio/busy.mp3?token=s3cr3t", tmp_path / "busy.mp3", max_bytes=10**6)
    assert transient.value.retry_after == 7 and "s3cr3t" not in str(transient.value)


# --- through the ingest flow ------------------------------------------------------------------


@pytest.fixture
def show(settings: Settings, fake_api: FakeAPI, host: FeedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FeedServer:
    """A feed-only show (no EPISODES_FILE) of two episodes, and the environment pointing at it and the fake providers."""
    host.files["/audio/ep1.mp3"] = mp3(tmp_path, "ep1.mp3", 18, 330)
    host.files["/audio/ep2.mp3"] = mp3(tmp_path, "ep2.mp3", 19, 440)
    host.items = [
        Item("tag:show,2024:1", "Episode one", "/audio/ep1.mp3", number=1, duration="0:18", published=date(2024, 3, 1),
             transcripts=(("/t/1.vtt", "text/vtt"),)),  # not on the server: a 404, so the episodes are transcribed
        Item("tag:show,2024:2", "Episode two", "/audio/ep2.mp3", number=2, duration="19", published=date(2024, 3, 8),
             transcripts=(("/t/2.vtt", "text/vtt"),)),
    ]
    env = {
        **app_environment(settings, fake_api),
        "FEED_URL": host.url + "/feed.xml",
        "DEFAULT_SPEAKERS_MAP": json.dumps(SPEAKERS),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return host


def feed_id(guid: str) -> str:
    """The show's items are numbered (itunes:episode) as their guid ends: `tag:show,2024:2` is `feed-2`."""
    return "feed-" + guid.rsplit(":", 1)[1]


def audio_gets(host: FeedServer) -> list[str]:
    return [path for path, _ in host.requests if path.startswith("/audio/")]


def test_new_feed_episodes_are_downloaded_and_processed_and_a_rerun_skips_them(
    settings: Settings, show: FeedServer, fake_api: FakeAPI, prefect_api: str, tmp_path: Path
) -> None:
    show.faults["/audio/ep2.mp3"].append(503)  # transient: retried
    state = run_ingest()
    assert state.is_completed(), state.message
    one, two = feed_id("tag:show,2024:1"), feed_id("tag:show,2024:2")
    assert {e: s for e, (s, n, _) in statuses(settings).items() if n > 0} == {one: "processed", two: "processed"}
    assert sorted(audio_gets(show)) == ["/audio/ep1.mp3", "/audio/ep2.mp3", "/audio/ep2.mp3"]
    with Database.from_settings(settings) as db, db.connection() as conn:
        row = conn.execute(
            "SELECT source, guid, audio_url, audio_size, episode_number, audio_sha256 = processed_sha256 FROM episodes "
            "WHERE episode_id = %s", (one,)
        ).fetchone()
        speakers = {r[0] for r in conn.execute("SELECT DISTINCT speaker FROM segments")}
    assert row == ("feed", "tag:show,2024:1", show.url + "/audio/ep1.mp3", len(show.files["/audio/ep1.mp3"]), 1, True)
    assert speakers == set(SPEAKERS.values())

    show.files["/audio/ep3.mp3"] = mp3(tmp_path, "ep3.mp3", 18, 550)
    show.items.append(Item("tag:show,2024:3", "Episode three", "/audio/ep3.mp3", number=3))
    listens = len(fake_api.requests_to(LISTEN))
    assert run_ingest().is_completed()
    assert audio_gets(show)[3:] == ["/audio/ep3.mp3"]  # only the new one
    assert len(fake_api.requests_to(LISTEN)) == listens + 1

    provider_requests, downloads = len(fake_api.requests), len(audio_gets(show))
    assert run_ingest().is_completed()
    assert (len(fake_api.requests), len(audio_gets(show))) == (provider_requests, downloads)
    assert len(show.gets("/feed.xml")) == 3  # the feed itself is read on every run


def test_a_broken_enclosure_fails_only_its_episode(settings: Settings, show: FeedServer, prefect_api: str) -> None:
    del show.files["/audio/ep2.mp3"]
    state = run_ingest()
    assert state.is_failed() and "1/2 episodes processed" in state.message
    result = statuses(settings)
    assert result[feed_id("tag:show,2024:1")][0] == "processed"
    status, _, error = result[feed_id("tag:show,2024:2")]
    assert status == "failed" and f"download {show.url}/audio/ep2.mp3: HTTP 404" in error
    assert audio_gets(show).count("/audio/ep2.mp3") == 1  # a 404 is not retried


def test_an_unreadable_feed_fails_the_run_but_not_the_catalogue_episodes(
    settings: Settings, show: FeedServer, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.audio_dir.mkdir(parents=True, exist_ok=True)
    (settings.audio_dir / "cat.mp3").write_bytes(show.files["/audio/ep1.mp3"])
    settings.episodes_file.write_text(json.dumps([{"episode_id": "cat-1", "file_name": "cat.mp3"}]))
    monkeypatch.setenv("FEED_URL", show.url + "/gone.xml")  # 404: permanent, not retried
    state = run_ingest()
    assert state.is_failed() and "feed discovery failed" in state.message and "1/1 episodes processed" in state.message
    assert statuses(settings)["cat-1"][0] == "processed"


def test_a_changed_enclosure_is_downloaded_and_processed_again(
    settings: Settings, show: FeedServer, fake_api: FakeAPI, prefect_api: str, tmp_path: Path
) -> None:
    show.items = show.items[:1]
    assert run_ingest().is_completed()
    episode = feed_id("tag:show,2024:1")
    first = {p.name for p in settings.feed_audio_path.iterdir()}
    show.files["/audio/ep1.mp3"] = new = mp3(tmp_path, "ep1-v2.mp3", 21, 660)  # same URL, new audio and length
    assert run_ingest().is_completed()
    assert audio_gets(show) == ["/audio/ep1.mp3", "/audio/ep1.mp3"]
    assert len(fake_api.requests_to(LISTEN)) == 2
    [current] = settings.feed_audio_path.iterdir()  # the old enclosure's file is gone
    assert current.name not in first and current.read_bytes() == new
    with Database.from_settings(settings) as db:
        [row] = episode_store.list_episodes(db, [episode])
    assert (row.status, row.processed_sha256) == ("processed", hashlib.sha256(new).hexdigest())


# --- gdr costs and gdr ingest --dry-run -------------------------------------------------------


def gdr(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_gdr_costs_per_episode_and_total(db: Database, show: FeedServer) -> None:
    episode_store.sync_catalogue(db, [])
    episode_store.sync_feed(db, parse_feed(show.rss().encode()), SPEAKERS)
    one, two = feed_id("tag:show,2024:1"), feed_id("tag:show,2024:2")
    calls = [(one, "transcribe", "deepgram", 1, 600.0, 0, 0.043), (one, "embed", "openai", 1, 0.0, 2000, 0.00004),
             (two, "transcribe", "deepgram", 1, 120.0, 0, 0.0086)]
    for episode, stage, provider, requests, seconds, tokens, cost in calls:
        cost_store.record_call(db, run_id="r1", episode_id=episode, stage=stage, provider=provider, model="m",
                          requests=requests, audio_seconds=seconds, tokens=tokens, cost_usd=cost)
    with db.connection() as conn:
        conn.execute("UPDATE provider_calls SET created_at = '2024-01-01' WHERE episode_id = %s", (two,))

    report = json.loads(gdr("costs", "--json"))
    assert report["total"] == {"requests": 3, "audio_minutes": 12.0, "tokens": 2000, "cost_usd": 0.05164,
                               "saved_usd": 0.0, "publisher_transcripts": 0}
    assert report["episodes"][0] == {"episode_id": one, "title": "Episode one", "requests": 2, "audio_minutes": 10.0,
                                     "tokens": 2000, "cost_usd": 0.04304, "saved_usd": 0.0, "publisher_transcripts": 0}
    recent = json.loads(gdr("costs", "--since", "2024-06-01", "--json"))
    assert [e["episode_id"] for e in recent["episodes"]] == [one] and recent["total"]["cost_usd"] == 0.04304
    table = gdr("costs")
    assert "Episode one" in table and "0.0516" in table
    status = json.loads(gdr("status", "--json"))["episodes"]
    assert {e["episode_id"]: e["cost_usd"] for e in status} == {one: 0.04304, two: 0.0086}
    assert "0.0430" in gdr("status")


def test_dry_run_estimates_without_calling_any_provider(settings: Settings, show: FeedServer, fake_api: FakeAPI) -> None:
    make_audio(settings.audio_dir / "local.mp3", 30, 500)
    settings.episodes_file.write_text(json.dumps([{"episode_id": "L1", "file_name": "local.mp3", "title": "Local one"}]))
    output = gdr("ingest", "--dry-run")
    assert fake_api.requests == [] and audio_gets(show) == []
    assert sorted(p.name for p in settings.audio_dir.iterdir()) == ["local.mp3"]  # nothing downloaded
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in output.splitlines()
             if line.count("│") >= 6}
    # 30 s of local audio (probed) and 18 s / 19 s from the feed's itunes:duration; 2.7 words/s * 1.3 tokens/word.
    # The feed's items link a VTT transcript (FEED_TRANSCRIPTS=prefer): no transcription, its price saved.
    assert lines["L1"] == ["Local one", "0.50", "105", f"{0.5 * 0.0043 + 105 / 1e6 * 0.02:.4f}", "deepgram", "0.0000"]
    assert lines[feed_id("tag:show,2024:1")] == ["Episode one", "0.30", "63", f"{63 / 1e6 * 0.02:.4f}",
                                                 "publisher (text/vtt)", f"{0.3 * 0.0043:.4f}"]
    assert lines["total"][1:3] == [f"{67 / 60:.2f}", str(105 + 63 + 67)]
    assert lines["total"][4:] == ["2 from the publisher", f"{(18 + 19) / 60 * 0.0043:.4f}"]
    assert "would process 3 episodes" in output


def test_an_upgrade_keeps_hashed_ids_and_downloaded_audio_and_new_items_get_readable_unique_ids(
    settings: Settings, show: FeedServer, db: Database
) -> None:
    """An episode registered before readable ids (`feed-<hash>`, audio downloaded into AUDIO_DIR) keeps both;
    new items are named by their itunes:episode, and a number another episode has gets its guid's hash."""
    [old_item, _] = parse_feed(show.rss().encode())
    old_id = old_item.hashed_id
    settings.audio_dir.mkdir(parents=True)
    legacy_audio = settings.audio_dir / old_item.file_name(old_id)
    legacy_audio.write_bytes(show.files["/audio/ep1.mp3"])
    with db.connection() as conn:  # the row as the previous version registered it
        conn.execute("INSERT INTO episodes (episode_id, guid, source, file_name, audio_url, title) "
                     "VALUES (%s, %s, 'feed', %s, %s, 'Episode one')",
                     (old_id, old_item.guid, old_item.file_name(old_id), old_item.enclosure_url))
    show.items.append(Item("tag:other-show:2", "Another two", "/audio/ep2.mp3", number=2))

    gdr("ingest", "--dry-run")  # registers the feed's items; downloads nothing
    clash = "feed-2-" + hashlib.sha1(b"tag:other-show:2").hexdigest()[:6]
    assert {r.episode_id for r in episode_store.list_episodes(db)} == {old_id, "feed-2", clash}
    jobs = {job.episode_id: job for job in plan_episodes(Settings(), db).jobs}  # the environment names the feed
    assert jobs[old_id].audio_path == legacy_audio.resolve() and not jobs[old_id].needs_download
    assert jobs["feed-2"].audio_path.parent == settings.home / "audio" and jobs["feed-2"].needs_download
    assert audio_gets(show) == []
    assert episode_store.sync_feed(db, parse_feed(show.rss().encode()), {})[old_item.guid] == old_id  # and stays
