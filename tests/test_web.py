"""`gdr web` (issue 26): the search page that plays the cited moment, tested in a real browser (headless
Chromium driven by Playwright; Debian's `chromium`, since Playwright's own build cannot be downloaded here) and
with plain HTTP for the audio's range requests and bad input. The page is the real `gdr web` in a child process,
on the sample episodes (real Postgres + pgvector, real MiniLM vectors, the real sample mp3s)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from gent_disagreement_rag.settings import Settings
from tests.support.builders import free_port
from tests.support.samples import REPO_ROOT, sample_archive, sample_script
from tests.support.servers import gdr_executable, gdr_server, server_environment

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EVENT_DEADLINE_MS = 60_000  # a browser event on 2 shared cores: generous, and ends as soon as it happens
AUDIO = REPO_ROOT / "data" / "audio" / "GDR-001.mp3"
FEED_AUDIO = "https://feeds.example.org/ep7.mp3"  # never fetched: the test reads what the page would play


@pytest.fixture(scope="module")
def archive(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with sample_archive(pg_server, tmp_path_factory.mktemp("web")) as settings:
        with psycopg.connect(settings.external_database_url()) as owner:
            # A catalogue entry whose file_name climbs out of AUDIO_DIR: its "audio" must never be served.
            owner.execute("INSERT INTO episodes (episode_id, title, file_name, source) VALUES "
                          "('escape', 'Escape', '../../pyproject.toml', 'catalogue')")
            # A feed episode whose file_name is a real file in AUDIO_DIR: it still plays from its audio_url.
            owner.execute("INSERT INTO episodes (episode_id, title, file_name, audio_url, guid, source, status) VALUES "
                          "('feed-7', 'From the feed', 'GDR-002.mp3', %s, 'g-7', 'feed', 'processed')", (FEED_AUDIO,))
            owner.execute("INSERT INTO segments (episode_id, position, speaker, start_seconds, end_seconds, text, "
                          "token_count) VALUES ('feed-7', 0, 'Host', 0, 30, 'zzqx vvkw', 2)")
        yield settings


@pytest.fixture(scope="module")
def web(archive: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("web-log") / "gdr-web.log"
    with gdr_server(["web", "--port", str(free_port())], archive, log, "gdr web on ") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"])
        yield chromium
        chromium.close()


def seeks(page: Page, count: int) -> list[float]:
    """The player's currentTime at each `seeked` event so far, once there are `count` of them."""
    page.wait_for_function(f"window.__seeks.length >= {count}", timeout=EVENT_DEADLINE_MS)
    return page.evaluate("window.__seeks")


def turn_of(episode: int, words: str) -> dict[str, Any]:
    return next(t for t in sample_script(episode)["turns"] if words in t["text"])


def test_a_query_plays_the_hit_from_its_second_and_a_transcript_turn_seeks(web: str, browser: Browser,
                                                                            tmp_path: Path) -> None:
    mite = turn_of(1, "a parasitic mite")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(web)
    assert page.locator("#episodes tr").count() == 1 + 6  # header, the 4 samples, 'escape', 'feed-7'
    page.fill("input[name=q]", "Which parasite spreads deformed wing virus in honeybee hives?")
    page.press("input[name=q]", "Enter")
    page.wait_for_selector("#results .result", timeout=EVENT_DEADLINE_MS)
    top = page.locator("#results .result").first
    assert mite["text"] in top.inner_text() and mite["speaker_name"] in top.inner_text()
    assert float(top.get_attribute("data-start")) == pytest.approx(mite["start"])
    page.evaluate("window.__seeks = []; document.getElementById('player')"
                  ".addEventListener('seeked', e => window.__seeks.push(e.target.currentTime))")
    top.click()
    assert seeks(page, 1)[0] == pytest.approx(mite["start"], abs=0.05)
    assert page.evaluate("document.getElementById('player').currentSrc").endswith("/audio/1")

    # The transcript around the hit: the hit's turn marked, and another turn plays from its own start.
    page.wait_for_selector("#transcript .turn.current", timeout=EVENT_DEADLINE_MS)
    assert mite["text"] in page.locator("#transcript .turn.current").inner_text()
    page.screenshot(path=str(tmp_path / "web-page.png"), full_page=True)
    turns = page.locator("#transcript .turn")
    later = next(i for i in range(turns.count()) if float(turns.nth(i).get_attribute("data-start")) > mite["end"])
    expected = float(turns.nth(later).get_attribute("data-start"))
    turns.nth(later).click()
    assert seeks(page, 2)[1] == pytest.approx(expected, abs=0.05)
    page.screenshot(path=str(tmp_path / "web-page-turn.png"))
    print(f"screenshots: {tmp_path}")


def test_a_credited_reply_shows_its_question_above_it(web: str, browser: Browser) -> None:
    asked, answer = turn_of(1, "Are the bees actually in trouble?"), turn_of(1, "Honeybees as a species are fine")
    page = browser.new_page()
    page.goto(f"{web}/?{httpx.QueryParams({'q': asked['text']})}")
    top = page.locator("#results .result").first
    assert asked["text"] in top.locator(".question").inner_text()
    assert answer["text"] in top.locator(".text").inner_text()


def test_the_filters_narrow_the_results_and_stay_chosen(web: str, browser: Browser) -> None:
    page = browser.new_page()
    page.goto(web)
    page.fill("input[name=q]", "how does it work")
    page.select_option("select[name=speaker]", "Priya Raman")
    page.select_option("select[name=episode]", "3")
    page.click("button[type=submit]")
    page.wait_for_selector("#results .result", timeout=EVENT_DEADLINE_MS)
    results = page.locator("#results .result")
    assert {results.nth(i).get_attribute("data-episode") for i in range(results.count())} == {"3"}
    assert all("Priya Raman" in m for m in results.locator(".meta").all_inner_texts() if "asked" not in m)
    assert page.locator("select[name=speaker]").input_value() == "Priya Raman"
    assert page.locator("select[name=episode]").input_value() == "3"


def test_local_audio_is_served_with_range_requests(web: str) -> None:
    size, data = AUDIO.stat().st_size, AUDIO.read_bytes()
    with httpx.Client(base_url=web, timeout=60) as client:
        whole = client.get("/audio/1")
        assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
        part = client.get("/audio/1", headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{size}"
        past = client.get("/audio/1", headers={"Range": f"bytes={size + 10}-{size + 20}"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"


@pytest.mark.parametrize(("path", "status", "says"), [
    ("/?q=", 400, "the search query is empty"),
    ("/?q=%20%20", 400, "the search query is empty"),
    ("/?q=bees&episode=999", 400, "episode &#x27;999&#x27; does not exist (known episodes: 1, 2, 3, 4, escape, feed-7)"),
    ("/transcript?episode=999&start=0", 400, "episode &#x27;999&#x27; does not exist"),
    ("/transcript?episode=1&start=99999", 400, "start 99999 s is outside episode &#x27;1&#x27;"),
    ("/transcript?episode=1&start=ten", 400, "start and end are seconds"),
    ("/audio/999", 404, "episode '999' does not exist"),
    ("/audio/escape", 404, "episode 'escape' has no local audio file"),  # its file_name points outside AUDIO_DIR
    ("/audio/feed-7", 404, "episode 'feed-7' has no local audio file"),  # a feed episode plays from its audio_url
    ("/audio/..%2F..%2Fpyproject.toml", 404, "nothing at /audio/../../pyproject.toml"),
    ("/audio/%2e%2e/%2e%2e/pyproject.toml", 404, "nothing at /"),
])
def test_bad_input_is_refused_saying_what_was_wrong(web: str, path: str, status: int, says: str) -> None:
    with httpx.Client(base_url=web, timeout=60) as client:
        response = client.get(path)
    assert response.status_code == status and says in response.text
    assert "[project]" not in response.text and "Traceback" not in response.text


def test_a_feed_episode_plays_from_its_audio_url(web: str) -> None:
    with httpx.Client(base_url=web, timeout=60) as client:
        fragment = client.get("/transcript", params={"episode": "feed-7", "start": 0})
    assert fragment.status_code == 200 and f"data-src='{FEED_AUDIO}'" in fragment.text and "zzqx vvkw" in fragment.text


def test_the_episode_list_shows_status_and_duration(web: str, browser: Browser) -> None:
    page = browser.new_page()
    page.goto(web)
    rows = {r[0]: r for r in (page.locator("#episodes tr").nth(i).locator("td").all_inner_texts()
                              for i in range(1, page.locator("#episodes tr").count()))}
    script = sample_script(2)
    minutes, seconds = divmod(int(script["duration"]), 60)
    assert rows["2"][1] == script["title"] and rows["2"][3] == f"00:{minutes:02d}:{seconds:02d}"
    assert rows["2"][4] == "processed" and rows["escape"][4] == "pending"


def test_off_localhost_the_page_asks_for_the_token(archive: Settings, tmp_path: Path) -> None:
    done = subprocess.run([str(gdr_executable()), "web", "--host", "127.0.0.2", "--port", str(free_port())],
                          env={**os.environ, **server_environment(archive), "WEB_TOKEN": ""}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "give --token" in done.stderr
    token = "correct-horse-battery-staple"
    log = tmp_path / "gdr-web.log"
    with gdr_server(["web", "--host", "127.0.0.2", "--port", str(free_port()), "--token", token], archive, log,
                    "gdr web on ") as url:
        assert url.startswith("http://127.0.0.2:")
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/").status_code == 401 and client.get("/audio/1").status_code == 401
            assert client.post("/login", data={"token": "wrong"}).status_code == 401
            entered = client.post("/login", data={"token": token})
            assert entered.status_code == 303 and client.cookies.get("gdr_web_token")
            assert client.get("/?q=bees").status_code == 200
            assert client.get("/audio/1", headers={"Range": "bytes=0-9"}).status_code == 206
    assert token not in log.read_text()
