"""`gdr search`: the knowledge base's answers, as a table or JSON."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..search.types import DEFAULT_MODE, Mode
from .common import app, console, err_console, friendly_errors, load_settings


@app.command("search")
@friendly_errors
def search_command(
    query: Annotated[str, typer.Argument(help="A question or keywords")],
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="Number of results")] = 5,
    episode: Annotated[str | None, typer.Option("--episode", "-e", help="Only this episode id")] = None,
    speaker: Annotated[
        str | None,
        typer.Option("--speaker", "-s", help="Only this speaker: full name or leading name(s), case-insensitive"),
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only episodes published on/after YYYY-MM-DD")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Only episodes published on/before YYYY-MM-DD")] = None,
    mode: Annotated[Mode, typer.Option("--mode", "-m", case_sensitive=False, help="Ranking")] = DEFAULT_MODE,
    context: Annotated[int, typer.Option("--context", "-c", min=0, help="Chunks shown before/after each hit")] = 1,
    model: Annotated[str | None, typer.Option("--model", help="Embedding model id (default: the stored one)")] = None,
    min_score: Annotated[
        float, typer.Option("--min-score", min=0.0, max=1.0, help="Only hits with at least this relevance (0-1)")
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Search the transcripts: meaning (vector), words (text) or both fused (hybrid)."""
    from ..search import search

    results = search(query, k, episode=episode, speaker=speaker, since=since, until=until, mode=mode, context=context,
                     model_id=model, min_score=min_score, settings=load_settings())
    if results.notice:
        err_console.print(f"[yellow]{escape(results.notice)}[/]", highlight=False)
    if as_json:
        print(json.dumps({"query": query, "mode": results.mode.value, "model_id": results.model_id,
                          "relevance_basis": results.relevance_basis, "notice": results.notice,
                          "results": [h.as_json() for h in results]},
                         indent=2, ensure_ascii=False))
        return
    if not results:
        return
    title = f"{escape(query)}  [dim]({results.mode.value}{', ' + results.model_id if results.model_id else ''})[/]"
    table = Table(title=title, show_lines=True, expand=True)
    table.add_column("#", justify="right")
    table.add_column("relevance")
    table.add_column("episode · speaker · time · link", ratio=2, overflow="fold")
    table.add_column("text", ratio=3)

    def clip(text: str, limit: int = 280) -> str:
        return escape(text if len(text) <= limit else text[: limit - 1].rstrip() + "…")

    for h in results:
        where = f"[bold]{escape(h.title)}[/]\n" + (f"[italic]{escape(h.chapter)}[/]\n" if h.chapter else "")
        where += f"{escape(h.cited.speaker)}\n{h.cited_range}"
        if h.link:
            where += f"\n[dim][link={escape(h.link)}]{escape(h.link)}[/link][/]"
        if len(h.segments) == 1:
            text = clip(h.text)
        else:
            text = "\n".join(
                f"[bold]{escape(s.speaker)}:[/] {clip(s.text)}" if s.position in h.matched_positions
                else f"[dim]{escape(s.speaker)}: {clip(s.text)}[/]"
                for s in h.segments
            )
        table.add_row(str(h.rank), f"{h.relevance:.2f}", where, text)
    console.print(table)
    err_console.print(f"[dim]relevance: the estimated chance a hit answers the query ({escape(results.relevance_basis)})[/]",
                      highlight=False)
