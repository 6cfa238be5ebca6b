"""The episode catalogue: the user's `episodes.json`, validated before any work starts.

Format (the user's, kept): `[{"episode_id": 1, "file_name": "AGD-180.mp3", "speakers_map": {"1": "Ricky"},
"processed": false}]`, optionally with `title`, `published`, `audio_url`. The `processed` flag is read
but ignored: episode state lives in the database.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import CatalogueError
from ..settings import Settings
from . import display_title

V = TypeVar("V")


class CatalogueEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    episode_id: str = Field(min_length=1)
    file_name: str | None = Field(None, min_length=1)
    title: str | None = None
    published: date | None = None
    audio_url: str | None = None
    speakers_map: dict[str, str] = Field(default_factory=dict)
    processed: bool = False  # legacy, ignored

    @field_validator("episode_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a number or a string")
        return str(value) if isinstance(value, int) else value

    @field_validator("speakers_map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: object) -> object:
        if isinstance(value, dict):
            return speaker_numbers({str(k): v for k, v in value.items()})
        return value

    @property
    def display_title(self) -> str:
        return display_title(self.title, self.file_name, self.episode_id)


def speaker_numbers(speakers_map: dict[str, V]) -> dict[str, V]:
    """`speakers_map` itself when its keys are speaker numbers ("0", "1"), as the transcriber numbers voices; a key
    like "speaker_1" would never match one, so it is an error (a ValueError naming the key)."""
    for key in speakers_map:
        if not key.isdecimal():
            raise ValueError(f"key {key!r} is not a speaker number: keys are the transcriber's speaker numbers, "
                             'like {"0": "Ann", "1": "Bob"}')
    return speakers_map


def load_catalogue(path: Path) -> list[CatalogueEntry]:
    """Parse and validate the catalogue; any problem raises CatalogueError naming file, entry and field."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogueError(f"{path}: episodes file not found (set EPISODES_FILE, or FEED_URL for a feed-only show)") from None
    except json.JSONDecodeError as exc:
        raise CatalogueError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, list):
        raise CatalogueError(f"{path}: expected a JSON list of episodes, got {type(data).__name__}")
    entries: list[CatalogueEntry] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(data, 1):  # counted as a person counts them: the first entry is entry 1
        named = isinstance(item, dict) and "episode_id" in item
        label = f"entry {index}" + (f" (episode_id {item['episode_id']!r})" if named else "")
        if not isinstance(item, dict):
            raise CatalogueError(f"{path}: {label}: expected an object, got {type(item).__name__}")
        try:
            entry = CatalogueEntry.model_validate(item)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "?"
            raise CatalogueError(f"{path}: {label}: field '{field}': {err['msg']}") from None
        if entry.file_name is None and entry.audio_url is None:
            raise CatalogueError(f"{path}: {label}: field 'file_name': required (or give an audio_url)")
        if entry.episode_id in seen:
            raise CatalogueError(
                f"{path}: {label}: field 'episode_id': duplicate of entry {seen[entry.episode_id]} ({entry.episode_id!r})"
            )
        seen[entry.episode_id] = index
        entries.append(entry)
    return entries


def catalogue_entries(settings: Settings) -> list[CatalogueEntry]:
    """The EPISODES_FILE entries; none for a feed-only show (FEED_URL set and no EPISODES_FILE)."""
    if settings.feed_url and not settings.episodes_file.exists():
        return []
    return load_catalogue(settings.episodes_file)
