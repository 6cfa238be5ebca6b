"""`gdr mcp` and `gdr web`: the archive served read-only, to AI assistants and to people (serve/)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import app, err_console, friendly_errors, load_settings

DEFAULT_MCP_PORT = 8765
DEFAULT_WEB_PORT = 8766


@app.command("mcp")
@friendly_errors
def mcp_command(
    http: Annotated[bool, typer.Option("--http", help="Streamable HTTP on 127.0.0.1 instead of stdio")] = False,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port of --http")] = DEFAULT_MCP_PORT,
) -> None:
    """An MCP server for AI assistants: tools search, transcript, episodes, speakers (read-only)."""
    from ..serve.mcp_server import serve_mcp_http, serve_mcp_stdio

    settings = load_settings()
    if not http:
        serve_mcp_stdio(settings)
        return
    serve_mcp_http(settings, "127.0.0.1", port,
                   on_listening=lambda url: err_console.print(f"gdr mcp (streamable HTTP) on {url}", highlight=False))


@app.command("web")
@friendly_errors
def web_command(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on")] = DEFAULT_WEB_PORT,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; other than 127.0.0.1 needs --token")]
    = "127.0.0.1",
    token: Annotated[str | None, typer.Option("--token", envvar="WEB_TOKEN", show_envvar=True,
                                              help="A password the page asks for (required off 127.0.0.1)")] = None,
) -> None:
    """A search page that plays the cited moment, on http://127.0.0.1:PORT (read-only)."""
    from ..serve.web import serve_web

    serve_web(load_settings(), host, port, token=token,
              on_listening=lambda url: err_console.print(f"gdr web on {url}", highlight=False))
