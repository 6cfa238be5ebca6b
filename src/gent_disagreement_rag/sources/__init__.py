"""Where episodes come from: the user's episodes.json catalogue and podcast RSS feeds; and what an episode is called."""

from __future__ import annotations

from pathlib import PurePath


def display_title(title: str | None, file_name: str | None, episode_id: str) -> str:
    """An episode's name for people: its title, else its audio file's stem, else "Episode <id>" (the catalogue's
    entries and search results alike; here, not in catalogue.py, so that a search need not build the catalogue's models)."""
    return title or (PurePath(file_name).stem if file_name else f"Episode {episode_id}")
