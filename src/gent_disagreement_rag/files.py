"""Atomic file writes and content hashes: the one way this project puts a file on disk.

A file is written to a temporary name in its own folder, flushed, fsynced and renamed into place,
so a crash, a full disk or a concurrent reader never sees half a file: the old version survives.
A set of files (an episode's exports) is renamed into place only once all of them are written.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` (text is written as UTF-8); the previous file survives any failure."""
    write_all_atomic({path: data}, mode=mode)


def write_all_atomic(files: Mapping[Path, str | bytes], *, mode: int = 0o644) -> None:
    """Replace each path with its data as one set: every file is written and fsynced under a temporary name
    before the first is renamed into place, so a full disk or a failed write leaves every old file as it was."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            staged.append((_stage(path, data, mode), path))
        for staging, path in staged:
            os.replace(staging, path)
    except BaseException:
        for staging, _ in staged:
            Path(staging).unlink(missing_ok=True)
        raise


def _stage(path: Path, data: str | bytes, mode: int) -> str:
    """`data` written and fsynced to a temporary name beside `path`; returns that name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp's 0600 would make exports private to this user
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        Path(staging).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            # a failed write or fsync (a full disk) names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return staging


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
