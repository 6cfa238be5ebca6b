"""The podcast's RSS feed: its audio items, their Podcasting 2.0 transcript and chapters links, and
downloading their enclosures.

An item's identity is its guid, the one identity podcast feeds promise to keep (items without a guid
use their enclosure URL, as podcast apps do); the database's `guid` column is the key. Its
`episode_id` is for people: `feed-7` from `itunes:episode` 7 (`feed-s2e7` in season 2), else the date
and title (`feed-2024-03-01-rates-and-risk`), else `feed-` + 12 hex digits of the guid's sha1. itunes
numbers are optional, reused across seasons and feeds, and sometimes renumbered, so the id is chosen
once, when the item is first registered (storage.episodes.sync_feed), is made unique there, and never
changes after: episodes registered before readable ids keep their `feed-<hash>` id.

The local file name also encodes the enclosure (URL and length). A changed enclosure therefore gets
a new file name and is downloaded again, and the new content hash makes the planner re-process it.

Downloads stream into `<file>.part`, and the finished file appears only by atomic rename, so a file
that exists is complete. A partial file is resumed with a Range request guarded by If-Range, so a
file that changed on the server is fetched whole and never spliced onto an old prefix.
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
import os
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import feedparser
import httpx

from .. import __version__
from ..errors import PermanentProviderError, TransientProviderError
from ..files import write_atomic
from ..providers.http import status_error
from .publisher import CHAPTERS_TYPE, TranscriptLink

HEADERS = {"User-Agent": f"gent-disagreement-rag/{__version__}", "Accept-Encoding": "identity"}
FEED_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0)  # the read timeout applies between chunks, not to the whole file


@dataclass(frozen=True, slots=True)
class FeedItem:
    guid: str
    title: str | None
    published: date | None
    enclosure_url: str
    enclosure_length: int | None
    enclosure_type: str | None
    duration_seconds: float | None
    episode_number: int | None
    season_number: int | None = None
    transcripts: tuple[TranscriptLink, ...] = ()  # podcast:transcript links, in feed order
    chapters_url: str | None = None  # podcast:chapters (JSON chapters)

    @property
    def hashed_id(self) -> str:
        """The id of every feed episode registered before readable ids, and the last resort for new ones."""
        return "feed-" + hashlib.sha1(self.guid.encode()).hexdigest()[:12]

    @property
    def readable_id(self) -> str:
        """`feed-7`, `feed-s2e7`, `feed-<date>-<title words>`, else the hashed id (unique-making is the store's)."""
        if self.episode_number:
            season = f"s{self.season_number}e" if self.season_number and self.season_number > 1 else ""
            return f"feed-{season}{self.episode_number}"
        words = re.findall(r"[a-z0-9]+", (self.title or "").lower())
        if words:
            slug = "-".join(words)[:40].rstrip("-")
            return f"feed-{self.published.isoformat()}-{slug}" if self.published else f"feed-{slug}"
        return self.hashed_id

    def file_name(self, episode_id: str) -> str:
        """`<episode_id>-<hash of enclosure URL and length><extension>`: a changed enclosure is a new file."""
        enclosure = hashlib.sha1(f"{self.enclosure_url}\n{self.enclosure_length}".encode()).hexdigest()[:8]
        return f"{episode_id}-{enclosure}{_extension(self.enclosure_url, self.enclosure_type)}"


def is_enclosure_file(name: str, episode_id: str) -> bool:
    """Whether `name` is one of `episode_id`'s enclosure files (FeedItem.file_name), not another episode's
    whose id merely starts the same (`feed-7` and `feed-7-1a2b3c`)."""
    return re.fullmatch(re.escape(episode_id) + r"-[0-9a-f]{8}(\.[a-z0-9]{1,5})?", name) is not None


class Download(NamedTuple):
    path: Path
    sha256: str
    size: int


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment (where tokens live), for messages and logs."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def parse_feed(source: bytes | str) -> list[FeedItem]:
    """The feed's items that have an enclosure, in feed order, one per guid; `source` is the XML or its URL."""
    label = f"feed {safe_url(source)}" if isinstance(source, str) else "feed"
    if isinstance(source, str):
        source = fetch(source, label)
    parsed = feedparser.parse(source)
    if parsed.bozo and not parsed.entries:
        raise PermanentProviderError(f"{label}: not an RSS or Atom feed ({parsed.get('bozo_exception')})")
    links = _podcast_links(source)
    items: dict[str, FeedItem] = {}
    for entry in parsed.entries:
        item = _item(entry, links)
        if item is not None:
            items.setdefault(item.guid, item)
    return list(items.values())


def fetch(url: str, label: str, max_bytes: int | None = None) -> bytes:
    """A small file (a feed, a transcript, chapters) in one GET; errors are classified and name `label`."""
    with _http_errors(label):
        response = httpx.get(url, headers=HEADERS, timeout=FEED_TIMEOUT, follow_redirects=True)
    _check_status(response, label)
    if max_bytes is not None and len(response.content) > max_bytes:
        raise _oversize(label, max_bytes, "the limit for transcripts and chapters")
    return response.content


def download_enclosure(url: str, dest: Path, *, max_bytes: int, expected_size: int | None = None) -> Download:
    """Stream `url` into `dest` (resuming `dest.part` if there is one); returns the file, its sha256 and size.

    The size is verified against what the server declares (Content-Length or Content-Range). The
    feed's `expected_size` only rejects an oversize file before any byte is fetched: feeds' lengths
    are often stale, and hosts that insert ads serve other sizes than the feed says.
    """
    label = f"download {safe_url(url)}"
    if expected_size and expected_size > max_bytes:
        raise _oversize(label, max_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, validator_file = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.validator")
    offset = part.stat().st_size if part.exists() else 0
    headers = dict(HEADERS)
    if offset and validator_file.exists():
        headers |= {"Range": f"bytes={offset}-", "If-Range": validator_file.read_text(encoding="utf-8")}
    with _http_errors(label), httpx.stream(
        "GET", url, headers=headers, timeout=DOWNLOAD_TIMEOUT, follow_redirects=True
    ) as response:
        if response.status_code == 416 or (response.status_code == 206 and _range_start(response) != offset):
            part.unlink()
            raise TransientProviderError(f"{label}: the partial file does not match the server's; starting again")
        _check_status(response, label)
        resuming = response.status_code == 206  # a 200 to a Range request: the server sends the whole file
        total = _declared_size(response, offset if resuming else 0)
        if total is not None and total > max_bytes:
            raise _oversize(label, max_bytes)
        if not resuming:
            _remember_validator(response, validator_file)
        size = offset if resuming else 0
        with open(part, "r+b" if resuming else "wb") as f:
            # (file_digest reads the buffered file open() returns; typeshed wants a narrower type than BinaryIO)
            digest = hashlib.file_digest(f, "sha256") if resuming else hashlib.sha256()  # type: ignore[arg-type]
            for chunk in response.iter_bytes():  # as received: a dropped connection keeps every byte so far
                size += len(chunk)
                if size > max_bytes:
                    f.close()
                    for leftover in (part, validator_file):
                        leftover.unlink(missing_ok=True)
                    raise _oversize(label, max_bytes)
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    if total is not None and size != total:
        raise TransientProviderError(f"{label}: got {size} of {total} bytes")
    os.replace(part, dest)
    validator_file.unlink(missing_ok=True)
    return Download(dest, digest.hexdigest(), size)


# --- feed items -------------------------------------------------------------------------------


class _PodcastLinks(NamedTuple):
    transcripts: tuple[TranscriptLink, ...]
    chapters_url: str | None


PODCAST_NS = "{https://podcastindex.org/namespace/1.0}"


def _podcast_links(source: bytes) -> dict[str, _PodcastLinks]:
    """Each item's podcast:transcript and podcast:chapters links, by guid (else enclosure URL).

    Read with ElementTree because feedparser keeps only the last `podcast:transcript` of an item, and
    publishers list one per format. A feed ElementTree cannot parse (feedparser is more forgiving) falls
    back to feedparser's one link per item (see _item).
    """
    try:
        root = ElementTree.fromstring(source)
    except ElementTree.ParseError:
        return {}
    links: dict[str, _PodcastLinks] = {}
    for item in root.iter("item"):
        enclosure = item.find("enclosure")
        key = (item.findtext("guid") or "").strip() or (enclosure.get("url") if enclosure is not None else None)
        if not key:
            continue
        transcripts = tuple(
            TranscriptLink(t.get("url", "").strip(), t.get("type", "").strip(), t.get("language"), t.get("rel"))
            for t in item.iter(PODCAST_NS + "transcript") if t.get("url", "").strip()
        )
        chapters = [c.get("url", "").strip() for c in item.iter(PODCAST_NS + "chapters")
                    if c.get("url", "").strip() and c.get("type", CHAPTERS_TYPE).strip() == CHAPTERS_TYPE]
        links.setdefault(key, _PodcastLinks(transcripts, chapters[0] if chapters else None))
    return links


def _item(entry: Any, links: dict[str, _PodcastLinks]) -> FeedItem | None:
    enclosures = [e for e in entry.get("enclosures", []) if e.get("href")]
    if not enclosures:
        return None
    audio = [e for e in enclosures if str(e.get("type", "")).startswith("audio/")]
    enclosure = (audio or enclosures)[0]
    published = entry.get("published_parsed") or entry.get("updated_parsed")
    guid = entry.get("id") or enclosure["href"]
    found = links.get(guid) or links.get(enclosure["href"]) or _feedparser_links(entry)
    return FeedItem(
        guid=guid,
        title=entry.get("title"),
        published=date(*published[:3]) if published else None,
        enclosure_url=enclosure["href"],
        enclosure_length=_positive_int(enclosure.get("length")),
        enclosure_type=enclosure.get("type") or None,
        duration_seconds=_duration(entry.get("itunes_duration")),
        episode_number=_positive_int(entry.get("itunes_episode") or entry.get("podcast_episode")),
        season_number=_positive_int(entry.get("itunes_season") or entry.get("podcast_season")),
        transcripts=found.transcripts,
        chapters_url=found.chapters_url,
    )


def _feedparser_links(entry: Any) -> _PodcastLinks:
    """What feedparser kept of the podcast: tags (one transcript at most), for feeds ElementTree rejects."""
    transcript, chapters = entry.get("podcast_transcript") or {}, entry.get("podcast_chapters") or {}
    transcripts = (TranscriptLink(transcript["url"], transcript.get("type", ""), transcript.get("language"),
                                  transcript.get("rel")),) if transcript.get("url") else ()
    return _PodcastLinks(transcripts, chapters.get("url") or None)


def _positive_int(text: object) -> int | None:
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value > 0 else None


def _duration(text: object) -> float | None:
    """itunes:duration is seconds, MM:SS or HH:MM:SS."""
    if text is None:
        return None
    try:
        parts = [float(p) for p in str(text).strip().split(":")]
    except ValueError:
        return None
    if not 1 <= len(parts) <= 3:
        return None
    return functools.reduce(lambda total, part: total * 60 + part, parts) or None


def _extension(url: str, mime_type: str | None) -> str:
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix):
        return suffix
    return (mimetypes.guess_extension(mime_type) if mime_type else None) or ""


# --- HTTP -------------------------------------------------------------------------------------


@contextmanager
def _http_errors(label: str) -> Iterator[None]:
    """Timeouts and dropped connections can succeed later: transient, so the orchestration retries them."""
    try:
        yield
    except httpx.TimeoutException:
        raise TransientProviderError(f"{label}: timed out") from None
    except httpx.TransportError as exc:
        raise TransientProviderError(f"{label}: {type(exc).__name__}: {exc}") from None


def _check_status(response: httpx.Response, label: str) -> None:
    if response.status_code >= 400:
        raise status_error(response.status_code, f"{label}: HTTP {response.status_code}", response.headers)


def _range_start(response: httpx.Response) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", response.headers.get("content-range", "").strip())
    return int(match[1]) if match else None


def _declared_size(response: httpx.Response, offset: int) -> int | None:
    """The complete file's size as the server states it (a 206's Content-Range total, else offset + length)."""
    if match := re.search(r"/(\d+)$", response.headers.get("content-range", "").strip()):
        return int(match[1])
    length = response.headers.get("content-length")
    return offset + int(length) if length and length.isdigit() else None


def _remember_validator(response: httpx.Response, validator_file: Path) -> None:
    """Keep a strong ETag (else Last-Modified) for If-Range: without one, a partial file is not resumed."""
    etag = response.headers.get("etag", "")
    validator = etag if etag and not etag.startswith("W/") else response.headers.get("last-modified")
    if validator:
        write_atomic(validator_file, validator)
    else:
        validator_file.unlink(missing_ok=True)


def _oversize(label: str, max_bytes: int, limit: str = "MAX_AUDIO_BYTES") -> PermanentProviderError:
    return PermanentProviderError(f"{label}: larger than the limit of {max_bytes} bytes ({limit})")
