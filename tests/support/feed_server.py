"""A podcast host on 127.0.0.1 for tests: an RSS 2.0 feed (itunes: and podcast: tags), enclosures with
Range/If-Range and injectable faults, and the publisher's transcript and chapters files."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr


@dataclass
class Item:
    guid: str
    title: str
    audio: str  # path on the server, e.g. /audio/ep1.mp3
    number: int | None = None
    duration: str | None = None  # itunes:duration as written in the feed
    published: date = date(2024, 3, 1)
    season: int | None = None
    transcripts: tuple[tuple[str, str], ...] = ()  # podcast:transcript (path on the server, type)
    chapters: str | None = None  # podcast:chapters, its path on the server


@dataclass
class FeedServer:
    """A podcast host on 127.0.0.1: `/feed.xml` lists `items`; `/audio/...` serves `files` with Range and If-Range.

    `faults[path]` is a queue; each entry answers one request: an HTTP status, ("cut", n) to close the
    connection after n bytes of the body, or "no-length" to send the body without a Content-Length.
    """

    items: list[Item] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, deque[Any]] = field(default_factory=lambda: defaultdict(deque))
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    ignore_range: bool = False
    url: str = ""

    def gets(self, path: str) -> list[dict[str, str]]:
        return [headers for p, headers in self.requests if p == path]

    def rss(self) -> str:
        entries = "".join(self._item(i) for i in self.items)
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"
     xmlns:podcast="https://podcastindex.org/namespace/1.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"
     xmlns:atom="http://www.w3.org/2005/Atom">
  <channel>
    <title>A Gent&apos;s Disagreement</title>
    <link>https://example.com/show</link>
    <atom:link href="{self.url}/feed.xml" rel="self" type="application/rss+xml"/>
    <language>en-us</language>
    <description>Two hosts disagree about economics.</description>
    <itunes:author>Ann and Bob</itunes:author>
    <itunes:image href="https://example.com/cover.jpg"/>
    <itunes:category text="Business"><itunes:category text="Investing"/></itunes:category>
    <itunes:explicit>false</itunes:explicit>
    <itunes:type>episodic</itunes:type>
    <podcast:locked>no</podcast:locked>
    <podcast:guid>5f2e3b5a-1c1d-5c5e-9b1a-0d3e5f7a9b2c</podcast:guid>
    <item>
      <title>A blog post, not an episode</title>
      <guid isPermaLink="false">post-1</guid>
      <description>No enclosure: skipped.</description>
    </item>
{entries}  </channel>
</rss>
"""

    def _item(self, i: Item) -> str:
        length = len(self.files.get(i.audio, b"")) or 123456
        published = format_datetime(datetime(i.published.year, i.published.month, i.published.day, 9, tzinfo=UTC))
        tags = [
            f"<title>{escape(i.title)}</title>",
            f'<guid isPermaLink="false">{escape(i.guid)}</guid>',
            f"<pubDate>{published}</pubDate>",
            f"<description><![CDATA[<p>Show notes for {escape(i.title)}.</p>]]></description>",
            f'<enclosure url={quoteattr(self.url + i.audio)} length="{length}" type="audio/mpeg"/>',
            "<itunes:episodeType>full</itunes:episodeType>",
            "<itunes:explicit>false</itunes:explicit>",
        ]
        tags += [f"<podcast:transcript url={quoteattr(self.url + path)} type={quoteattr(kind)}/>" for path, kind in i.transcripts]
        if i.chapters:
            tags.append(f'<podcast:chapters url={quoteattr(self.url + i.chapters)} type="application/json+chapters"/>')
        if i.season:
            tags.append(f"<itunes:season>{i.season}</itunes:season>")
        if i.duration:
            tags.append(f"<itunes:duration>{i.duration}</itunes:duration>")
        if i.number:
            tags += [f"<itunes:episode>{i.number}</itunes:episode>", f"<podcast:episode>{i.number}</podcast:episode>"]
        return "    <item>\n" + "".join(f"      {t}\n" for t in tags) + "    </item>\n"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = urlsplit(handler.path).path
        self.requests.append((path, {k.lower(): v for k, v in handler.headers.items()}))
        if path == "/feed.xml":
            return self._send(handler, 200, self.rss().encode(), {"Content-Type": "application/rss+xml"})
        fault = self.faults[path].popleft() if self.faults[path] else None
        if isinstance(fault, int):
            return self._send(handler, fault, b"oops", {"Retry-After": "7"})
        data = self.files.get(path)
        if data is None:
            return self._send(handler, 404, b"not found", {})
        etag = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "audio/mpeg"}
        match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range", ""))
        if match and not self.ignore_range and handler.headers.get("If-Range", etag) == etag:
            start = int(match[1])
            if start >= len(data):
                return self._send(handler, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(handler, 206, data[start:], headers, fault)
        return self._send(handler, 200, data, headers, fault)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str], fault: Any = None) -> None:
        handler.send_response(status)
        if fault != "no-length":
            handler.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body[: fault[1]] if isinstance(fault, tuple) else body)


@contextmanager
def feed_server() -> Iterator[FeedServer]:
    """A FeedServer listening on a free port of 127.0.0.1 until the block ends."""
    feed = FeedServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            feed.answer(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    feed.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield feed
    server.shutdown()
    server.server_close()
