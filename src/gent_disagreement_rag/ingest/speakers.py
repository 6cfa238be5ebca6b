"""Naming a voice after the fact (`gdr speakers name`): the stored episode's speaker gets the name in its segments
(search, the chat views), its export files and the voice library, and every other episode named from the library
(no speakers_map) is matched again, so a voice named once is named wherever it speaks. Nothing is transcribed
again: the episodes' speaker voices are in the database (the voices and name stages wrote them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..providers.transcribers import voices
from ..settings import Settings
from ..storage import episodes
from ..storage import voices as library
from ..storage.database import Database
from ..storage.episodes import EpisodeState
from ..text.exports import EXPORT_SUFFIXES


@dataclass
class Renamed:
    episodes: dict[str, dict[str, str]] = field(default_factory=dict)  # episode -> {old name: new name}
    enrolled: int = 0


def export_stem(row: episodes.EpisodeRow) -> str:
    """The export files' stem, as the plan names them: the audio file's for a catalogue episode, the id for a feed's."""
    return Path(row.file_name).stem if row.source != "feed" and row.file_name else row.episode_id


def _rename(settings: Settings, db: Database, row: episodes.EpisodeRow, speaker: int, name: str, out: Renamed) -> None:
    old = library.speaker_names(db, row.episode_id).get(str(speaker)) or f"Speaker {speaker}"
    if old == name:
        return
    library.rename_speaker(db, row.episode_id, speaker, name, old)
    library.rename_in_exports(settings.transcripts_dir, export_stem(row), list(EXPORT_SUFFIXES.values()), old, name)
    out.episodes.setdefault(row.episode_id, {})[old] = name


def name_speaker(settings: Settings, db: Database, episode_id: str, speaker: int, name: str) -> Renamed:
    """Speaker `speaker` of stored episode `episode_id` is `name`: enrolled, renamed there, and every episode
    without a speakers_map named again from the library."""
    name = name.strip()
    if not name:
        raise ConfigError("gdr speakers name: the name is empty")
    rows = {r.episode_id: r for r in episodes.list_episodes(db)}
    row = rows.get(episode_id)
    if row is None or row.status != EpisodeState.PROCESSED:
        raise ConfigError(f"gdr speakers name: episode {episode_id!r} is not a processed episode (see `gdr status`)")
    heard = {v.speaker for v in library.episode_voices(db, episode_id, voices.MODEL)}
    out = Renamed()
    if speaker not in heard:
        known = ", ".join(str(s) for s in sorted(heard)) or "none"
        raise ConfigError(f"gdr speakers name: episode {episode_id} has no stored voice for speaker {speaker} "
                          f"(speakers with a voice: {known})")
    out.enrolled = library.enroll(db, episode_id, voices.MODEL, {speaker: name})
    _rename(settings, db, row, speaker, name, out)
    for other in rows.values():
        config = other.segments_config or {}
        if other.episode_id == episode_id or other.status != EpisodeState.PROCESSED or "voice_naming" not in config:
            continue
        found = library.episode_voices(db, other.episode_id, voices.MODEL)
        named = voices.name_voices(found, library.library(db, voices.MODEL, excluding_episode=other.episode_id))
        for s, new in sorted(named.items()):
            _rename(settings, db, other, s, new, out)
    return out
