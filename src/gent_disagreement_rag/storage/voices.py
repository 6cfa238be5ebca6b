"""The voice library in the database (migration 0011): each episode's speaker voices, the named voices with their
samples, and renaming a speaker in what is stored (segments, hence the chat views and search) without
transcribing again."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from psycopg.types.json import Jsonb

from ..files import write_atomic
from ..providers.transcribers.voices import KnownVoice, SpeakerVoice
from .database import Database
from .rows import first_value
from .speakers import register_speakers


@dataclass(frozen=True)
class LibraryVoice:
    name: str
    model: str
    samples: int
    episodes: int
    minutes: float


def save_episode_voices(db: Database, episode_id: str, model: str, voices: Iterable[SpeakerVoice]) -> None:
    """Replace the episode's speaker voices of `model`."""
    with db.connection() as conn, conn.transaction():
        conn.execute("DELETE FROM episode_voices WHERE episode_id = %s AND model = %s", (episode_id, model))
        for v in voices:
            conn.execute("INSERT INTO episode_voices (episode_id, model, speaker, embedding, seconds, pitch) "
                         "VALUES (%s, %s, %s, %s, %s, %s)",
                         (episode_id, model, v.speaker, [float(x) for x in v.embedding], v.seconds, v.pitch))


def episode_voices(db: Database, episode_id: str, model: str) -> list[SpeakerVoice]:
    with db.connection() as conn:
        rows = conn.execute("SELECT speaker, embedding, seconds, pitch FROM episode_voices "
                            "WHERE episode_id = %s AND model = %s ORDER BY speaker", (episode_id, model)).fetchall()
    return [SpeakerVoice(s, np.asarray(e, dtype=np.float32), sec, pitch) for s, e, sec, pitch in rows]


def library(db: Database, model: str, *, excluding_episode: str | None = None) -> dict[str, KnownVoice]:
    """Every named voice of `model` with its samples (an episode's own samples left out on request: an episode is
    not recognised by the samples it gave)."""
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT v.name, s.embedding, s.pitch FROM voices v JOIN voice_samples s ON s.voice_id = v.id "
            "WHERE v.model = %s AND s.episode_id IS DISTINCT FROM %s ORDER BY v.name, s.episode_id, s.speaker",
            (model, excluding_episode)).fetchall()
    out: dict[str, list[tuple[np.ndarray, float]]] = {}
    for name, embedding, pitch in rows:
        out.setdefault(name, []).append((np.asarray(embedding, dtype=np.float32), np.nan if pitch is None else pitch))
    return {name: KnownVoice(np.stack([e for e, _ in samples]), np.array([p for _, p in samples]))
            for name, samples in out.items()}


def enroll(db: Database, episode_id: str, model: str, names: dict[int, str]) -> int:
    """Keep the named speakers' voices of the episode as samples of those names (a speaker named again moves to
    the new name); returns how many samples were written. Speakers without a stored voice are skipped."""
    stored = {v.speaker: v for v in episode_voices(db, episode_id, model)}
    written = 0
    with db.connection() as conn, conn.transaction():
        for speaker, name in sorted(names.items()):
            if speaker not in stored:
                continue
            conn.execute("DELETE FROM voice_samples s USING voices v WHERE s.voice_id = v.id AND v.model = %s "
                         "AND s.episode_id = %s AND s.speaker = %s", (model, episode_id, speaker))
            voice_id = first_value(conn.execute(
                "INSERT INTO voices (name, model) VALUES (%s, %s) "
                "ON CONFLICT (name, model) DO UPDATE SET name = EXCLUDED.name RETURNING id", (name, model)))
            v = stored[speaker]
            conn.execute("INSERT INTO voice_samples (voice_id, episode_id, speaker, embedding, seconds, pitch) "
                         "VALUES (%s, %s, %s, %s, %s, %s)",
                         (voice_id, episode_id, speaker, [float(x) for x in v.embedding], v.seconds, v.pitch))
            written += 1
        conn.execute("DELETE FROM voices v WHERE NOT EXISTS (SELECT 1 FROM voice_samples s WHERE s.voice_id = v.id)")
    return written


def list_voices(db: Database) -> list[LibraryVoice]:
    """The library: every named voice with its samples, and the episodes and minutes its name has in stored segments."""
    with db.connection() as conn:
        if first_value(conn.execute("SELECT to_regclass('voices')")) is None:
            return []  # a database no run of this version has migrated yet (a read does not migrate)
        rows = conn.execute(
            """SELECT v.name, v.model, count(s.*),
                      (SELECT count(DISTINCT g.episode_id) FROM segments g WHERE g.speaker = v.name),
                      (SELECT coalesce(sum(g.end_seconds - g.start_seconds), 0) / 60 FROM segments g WHERE g.speaker = v.name)
               FROM voices v LEFT JOIN voice_samples s ON s.voice_id = v.id
               GROUP BY v.id ORDER BY v.name, v.model""").fetchall()
    return [LibraryVoice(name, model, samples, episodes, round(float(minutes), 1))
            for name, model, samples, episodes, minutes in rows]


def speaker_names(db: Database, episode_id: str) -> dict[str, str]:
    """The names the episode's stored segments were made with (segments_config), by speaker number."""
    with db.connection() as conn:
        row = conn.execute("SELECT segments_config FROM episodes WHERE episode_id = %s", (episode_id,)).fetchone()
    if row is None:
        raise KeyError(episode_id)
    config = row[0] or {}
    return dict(config.get("speaker_names") or config.get("speakers_map") or {})


def rename_speaker(db: Database, episode_id: str, speaker: int, name: str, old: str) -> int:
    """Give speaker `speaker` of the stored episode the name `name` (it was `old`): its segments, hence search
    and the chat views, and the names recorded with them. Returns the segments renamed."""
    with db.connection() as conn:
        register_speakers(conn, {name})
        with conn.transaction():
            renamed = conn.execute("UPDATE segments SET speaker = %s WHERE episode_id = %s AND speaker = %s",
                                   (name, episode_id, old)).rowcount
            conn.execute(
                """UPDATE episodes SET segments_config = jsonb_set(coalesce(segments_config, '{}'::jsonb), '{speaker_names}',
                       coalesce(segments_config->'speaker_names', segments_config->'speakers_map', '{}'::jsonb) || %s)
                   WHERE episode_id = %s""", (Jsonb({str(speaker): name}), episode_id))
    return renamed


def rename_in_exports(folder: Path, stem: str, suffixes: Sequence[str], old: str, name: str) -> list[Path]:
    """The episode's export files with the speaker's old name replaced (as a whole name: "Speaker 1" is not
    part of "Speaker 12"), so they agree with the store without rendering them again from the transcript."""
    changed = []
    for suffix in suffixes:
        path = folder / f"{stem}{suffix}"
        if not path.exists():
            continue
        # In a JSON file the names are JSON strings: match and write them escaped as JSON escapes them.
        as_json = suffix.endswith(".json")
        pattern = re.compile(rf"(?<![\w]){re.escape(_as_written(old, as_json))}(?![\w])")
        text = path.read_text(encoding="utf-8")
        new = pattern.sub(_as_written(name, as_json).replace("\\", r"\\"), text)  # a literal replacement
        if new != text:
            write_atomic(path, new)
            changed.append(path)
    return changed


def _as_written(name: str, as_json: bool) -> str:
    return json.dumps(name, ensure_ascii=False)[1:-1] if as_json else name
