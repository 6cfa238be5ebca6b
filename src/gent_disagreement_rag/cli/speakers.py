"""`gdr speakers`: the voice library. Name a speaker of a stored episode once; episodes without a speakers_map
are then named by voice."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..storage.database import Database
from .common import app, console, counted, friendly_errors, load_settings

speakers_app = typer.Typer(help="The voice library: name a speaker once, recognised by voice in other episodes.",
                           no_args_is_help=True)
app.add_typer(speakers_app, name="speakers")


@speakers_app.command("name")
@friendly_errors
def speakers_name(
    episode: Annotated[str, typer.Argument(help="episode id (as `gdr status` lists it)")],
    speaker: Annotated[int, typer.Argument(help='the speaker number ("Speaker 0" is 0)')],
    name: Annotated[str, typer.Argument(help='the name, e.g. "Ricky Ghoshroy"')],
) -> None:
    """Name a speaker of a stored episode: renamed in its chunks, exports and the chat views (nothing is
    transcribed again), kept in the voice library, and recognised in every episode without a speakers_map."""
    from ..ingest.speakers import name_speaker

    settings = load_settings()
    with Database.from_settings(settings, migrate_schema=True) as db:
        result = name_speaker(settings, db, episode, speaker, name)
    for episode_id, renames in result.episodes.items():
        for old, new in renames.items():
            console.print(f"episode {episode_id}: {old} -> {new}", highlight=False)
    console.print(f"{name}: {counted(result.enrolled, 'voice sample')} added; "
                  f"{counted(len(result.episodes), 'episode')} renamed", highlight=False)


@speakers_app.command("list")
@friendly_errors
def speakers_list() -> None:
    """The voice library: each named voice, its samples, and the episodes and minutes its name has."""
    from ..storage import voices

    with Database.from_settings(load_settings()) as db:
        rows = voices.list_voices(db)
    if not rows:
        console.print('no named voices yet: a speakers_map, or `gdr speakers name EPISODE 0 "Name"`, adds one')
        return
    table = Table("voice", "model", "samples", "episodes", "minutes")
    for r in rows:
        table.add_row(r.name, r.model, str(r.samples), str(r.episodes), f"{r.minutes:g}")
    console.print(table)
