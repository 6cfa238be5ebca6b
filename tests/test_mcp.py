"""`gdr mcp` (issue 26): the archive as an MCP server, driven by the `mcp` SDK's own client over stdio and over
streamable HTTP, against a real Postgres + pgvector holding the sample episodes (stored from their scripts with
real MiniLM vectors, tests/support/samples.py). The server is the real `gdr` command in a child process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from gent_disagreement_rag.serve.archive import MAX_K, opened_archive
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.embedded import stop_embedded
from gent_disagreement_rag.storage.roles import READER_ROLE
from tests.support.builders import free_port
from tests.support.samples import REPO_ROOT, sample_archive, sample_script
from tests.support.servers import gdr_executable, gdr_server, server_environment

TOOLS = {"search", "transcript", "episodes", "speakers"}
DEADLINE = 120  # seconds any one MCP conversation may take (a cold start loads MiniLM on 2 shared cores)


@pytest.fixture(scope="module")
def archive(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with sample_archive(pg_server, tmp_path_factory.mktemp("mcp")) as settings:
        yield settings


def stdio_server(settings: Settings) -> StdioServerParameters:
    return StdioServerParameters(command=str(gdr_executable()), args=["mcp"], env=server_environment(settings),
                                 cwd=str(REPO_ROOT))


def converse(server: Any, talk: Callable[[Client], Awaitable[Any]]) -> Any:
    """Connect the SDK's client to `server` (stdio parameters or an HTTP URL), run `talk`, return its result."""

    async def main() -> Any:
        with anyio.fail_after(DEADLINE):
            async with Client(server) as client:
                return await talk(client)

    return anyio.run(main)


def payload(result: Any) -> dict[str, Any]:
    """A successful tool result's JSON (the SDK's structured content, else its one text block)."""
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


def error_text(result: Any) -> str:
    assert result.is_error, result
    text = " ".join(c.text for c in result.content)
    assert "Traceback" not in text and 'File "' not in text
    return text


def expected_turn(episode: int, words: str) -> dict[str, Any]:
    return next(t for t in sample_script(episode)["turns"] if words in t["text"])


async def every_tool(client: Client) -> dict[str, Any]:
    tools = (await client.list_tools()).tools
    return {
        "tools": {t.name: t for t in tools},
        "search": payload(await client.call_tool("search", {"query": "Which parasite spreads deformed wing virus in "
                                                                     "honeybee hives?", "k": 3})),
        "credited": payload(await client.call_tool("search", {"query": "Are the bees actually in trouble?", "k": 3})),
        "transcript": payload(await client.call_tool("transcript", {"episode": "2", "start": 30, "end": 90})),
        "episodes": payload(await client.call_tool("episodes", {})),
        "speakers": payload(await client.call_tool("speakers", {})),
    }


def check_every_tool(found: dict[str, Any]) -> None:
    assert set(found["tools"]) == TOOLS
    for tool in found["tools"].values():
        assert len(tool.description) > 80, tool.name  # written for a model to choose and use it
    schema = found["tools"]["search"].input_schema["properties"]
    assert {"query", "k", "speaker", "episode", "since", "until"} <= set(schema)
    assert all(schema[p].get("description") for p in ("query", "k", "speaker", "since"))

    mite = expected_turn(1, "a parasitic mite")
    top = found["search"]["results"][0]
    assert (top["episode_id"], top["speaker"], top["text"]) == ("1", mite["speaker_name"], mite["text"])
    assert top["start"] == pytest.approx(mite["start"]) and top["end"] == pytest.approx(mite["end"])
    assert top["link"].endswith(f"GDR-001.mp3#t={int(mite['start'])}") and top["title"].startswith("Bees on the Roof")

    # The reply that answers the matching question comes first, with that question attached.
    credited, asked = found["credited"]["results"][0], expected_turn(1, "Are the bees actually in trouble?")
    answer = expected_turn(1, "Honeybees as a species are fine")
    assert (credited["speaker"], credited["text"], credited["start"]) == (answer["speaker_name"], answer["text"], answer["start"])
    assert credited["question"] == {"speaker": asked["speaker_name"], "text": asked["text"], "start": asked["start"],
                                    "end": asked["end"]}

    turns = found["transcript"]["turns"]
    script = [t for t in sample_script(2)["turns"] if t["end"] > 30 and t["start"] < 90]
    assert [(t["speaker"], t["text"]) for t in turns] == [(t["speaker_name"], t["text"]) for t in script]

    episodes = {e["episode_id"]: e for e in found["episodes"]["episodes"]}
    assert set(episodes) == {"1", "2", "3", "4"}
    for episode_id, e in episodes.items():
        script = sample_script(episode_id)
        assert e["status"] == "processed" and e["duration_seconds"] == pytest.approx(script["duration"])
        assert set(e["speakers"]) == set(script["speakers_map"].values()) and e["published"] == script["published"]

    speakers = {s["name"]: s for s in found["speakers"]["speakers"]}
    names = {n for e in "1234" for n in sample_script(e)["speakers_map"].values()}
    assert set(speakers) == names
    assert speakers["Priya Raman"]["episodes"] == sum("Priya Raman" in sample_script(e)["speakers_map"].values()
                                                      for e in "1234")


async def bad_calls(client: Client) -> dict[str, str]:
    calls = {
        "empty query": ("search", {"query": "   "}),
        "k zero": ("search", {"query": "bees", "k": 0}),
        "k too big": ("search", {"query": "bees", "k": MAX_K + 1}),
        "unknown episode (search)": ("search", {"query": "bees", "episode": "999"}),
        "not a date": ("search", {"query": "bees", "since": "last week"}),
        "empty date range": ("search", {"query": "bees", "since": "2025-03-01", "until": "2025-01-01"}),
        "unknown episode (transcript)": ("transcript", {"episode": "999", "start": 0}),
        "past the end": ("transcript", {"episode": "1", "start": 100000, "end": 100060}),
        "end before start": ("transcript", {"episode": "1", "start": 60, "end": 30}),
        "unknown status": ("episodes", {"status": "finished"}),
        "unknown episode (speakers)": ("speakers", {"episode": "AGD-9"}),
        "k not a number": ("search", {"query": "bees", "k": "five"}),
        "no such tool": ("delete_everything", {}),
    }
    errors = {}
    for name, (tool, arguments) in calls.items():
        errors[name] = error_text(await client.call_tool(tool, arguments))
    # ...and it keeps serving.
    errors["after"] = payload(await client.call_tool("search", {"query": "bees", "k": 1}))["results"][0]["episode_id"]
    return errors


def check_bad_calls(errors: dict[str, Any]) -> None:
    assert "query is empty" in errors["empty query"]
    assert f"k must be between 1 and {MAX_K} (got 0)" in errors["k zero"]
    assert f"(got {MAX_K + 1})" in errors["k too big"]
    assert "episode '999' does not exist (known episodes: 1, 2, 3, 4)" in errors["unknown episode (search)"]
    assert "'last week' is not a date" in errors["not a date"]
    assert "since 2025-03-01 is after until 2025-01-01" in errors["empty date range"]
    assert "episode '999' does not exist" in errors["unknown episode (transcript)"]
    assert "start 100000 s is outside episode '1'" in errors["past the end"]
    assert "end (30 s) must be after start (60 s)" in errors["end before start"]
    assert "unknown status 'finished' (use one of: processed, pending, failed)" in errors["unknown status"]
    assert "episode 'AGD-9' does not exist" in errors["unknown episode (speakers)"]
    assert "k" in errors["k not a number"]  # the SDK's own argument validation, naming the field
    assert "delete_everything" in errors["no such tool"]
    assert errors["after"] == "1"


def test_over_stdio_every_tool_answers_and_the_top_hit_is_the_right_chunk(archive: Settings) -> None:
    check_every_tool(converse(stdio_server(archive), every_tool))


def test_over_stdio_a_bad_call_per_tool_is_a_tool_error_saying_what_was_wrong(archive: Settings) -> None:
    check_bad_calls(converse(stdio_server(archive), bad_calls))


def test_over_http_every_tool_answers_and_bad_calls_are_tool_errors(archive: Settings, tmp_path: Path) -> None:
    with gdr_server(["mcp", "--http", "--port", str(free_port())], archive, tmp_path / "mcp-http.log",
                    "gdr mcp (streamable HTTP) on ") as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")
        check_every_tool(converse(url, every_tool))
        check_bad_calls(converse(url, bad_calls))


def test_search_filters_by_speaker_episode_and_date_range(archive: Settings) -> None:
    async def talk(client: Client) -> dict[str, Any]:
        async def ids(**arguments: Any) -> list[tuple[str, str]]:
            found = payload(await client.call_tool("search", {"query": "how does it work", "k": 10, **arguments}))
            return [(r["episode_id"], r["speaker"]) for r in found["results"]]

        return {"range": await ids(since="2025-01-20", until="2025-01-31"), "until": await ids(until="2025-01-15"),
                "speaker": await ids(speaker="priya"), "episode": await ids(episode=3)}

    found = converse(stdio_server(archive), talk)
    published = {e: sample_script(e)["published"] for e in "1234"}
    assert {e for e, _ in found["range"]} == {e for e, d in published.items() if "2025-01-20" <= d <= "2025-01-31"}
    assert {e for e, _ in found["until"]} == {e for e, d in published.items() if d <= "2025-01-15"}
    assert found["speaker"] and {s for _, s in found["speaker"]} == {"Priya Raman"}
    assert found["episode"] and {e for e, _ in found["episode"]} == {"3"}


def test_the_server_reads_as_a_role_that_cannot_write(archive: Settings) -> None:
    """What the server's pool connects as: the reader role, whose every write is refused, even in a transaction
    it declares read-write (then by its privileges: SELECT only)."""
    with opened_archive(archive) as served, served.db.connection() as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == READER_ROLE
        assert conn.execute("SELECT count(*) FROM segments").fetchone()[0] > 0
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM segments")
        conn.rollback()
        conn.execute("BEGIN READ WRITE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE episodes SET title = 'changed'")
        conn.rollback()
        conn.execute("BEGIN READ WRITE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM provider_calls")  # the cost ledger is not the reader's
        conn.rollback()
    with psycopg.connect(archive.external_database_url()) as owner:
        assert owner.execute("SELECT count(*) FROM episodes WHERE title = 'changed'").fetchone()[0] == 0


def test_stdout_carries_only_the_protocol_and_a_missing_database_is_one_line(tmp_path: Path) -> None:
    """A server that cannot reach its database says so on stderr, in one line, and exits 1 (no traceback)."""
    settings = Settings(_env_file=None, database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none",
                        gdr_home=tmp_path / "home")
    done = subprocess.run([str(gdr_executable()), "mcp"], env={**os.environ, **server_environment(settings)},
                          input="", capture_output=True, text=True, timeout=DEADLINE, cwd=REPO_ROOT)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: cannot connect to Postgres") and "Traceback" not in done.stderr


def test_a_changed_episode_shows_at_once_though_the_lists_are_cached(archive: Settings) -> None:
    """The server keeps the episode and speaker lists between calls; a change to an episode (here its title, as
    a catalogue sync writes it) is seen by the next call."""
    owner_url = archive.external_database_url()

    async def talk(client: Client) -> tuple[str, str]:
        before = payload(await client.call_tool("episodes", {}))["episodes"]
        with psycopg.connect(owner_url) as owner:
            owner.execute("UPDATE episodes SET title = 'Renamed', updated_at = now() WHERE episode_id = '4'")
        after = payload(await client.call_tool("episodes", {}))["episodes"]
        return next(e["title"] for e in before if e["episode_id"] == "4"), next(e["title"] for e in after if e["episode_id"] == "4")

    old_title = sample_script(4)["title"]
    try:
        assert converse(stdio_server(archive), talk) == (old_title, "Renamed")
    finally:
        with psycopg.connect(owner_url) as owner:
            owner.execute("UPDATE episodes SET title = %s, updated_at = now() WHERE episode_id = '4'", (old_title,))


def test_on_its_own_embedded_postgres_it_starts_the_server_and_stdout_stays_the_protocols() -> None:
    """No DATABASE_URL: `gdr mcp` starts the embedded Postgres itself (pg_ctl runs while stdout is the protocol's
    channel, so anything it printed there would break the client's connection), creates the reader role, and
    answers. The schema is there (`gdr db init` made it, then the server was stopped): a read never migrates."""
    from gent_disagreement_rag.storage.embedded import database_url
    from gent_disagreement_rag.storage.schema import migrate

    home = Path(tempfile.mkdtemp(prefix="gdr-test-mcp-embedded-"))
    home.chmod(0o755)  # postgres runs as another OS user when we are root
    settings = Settings(_env_file=None, gdr_home=home / "gdr")
    migrate(database_url(settings))
    assert stop_embedded(settings)
    server = StdioServerParameters(command=str(gdr_executable()), args=["mcp"], env={"GDR_HOME": str(settings.gdr_home)},
                                   cwd=str(REPO_ROOT))

    async def talk(client: Client) -> dict[str, Any]:
        return {"episodes": payload(await client.call_tool("episodes", {})),
                "search": error_text(await client.call_tool("search", {"query": "bees"}))}

    try:
        found = converse(server, talk)
    finally:
        stop_embedded(settings)
        shutil.rmtree(home, ignore_errors=True)
    assert found["episodes"] == {"episodes": []}
    assert "the database has no embeddings yet: run `gdr ingest` first" in found["search"]
