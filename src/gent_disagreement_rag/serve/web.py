"""`gdr web`: one server-rendered search page that plays the cited moment (Starlette, uvicorn; no build step).

- `/`: a search box with speaker and episode filters; results as `gdr search` shows them (title, speaker, time,
  text, the question above a credited reply); the episode list with status and duration. Clicking a result
  plays its episode from the hit's second and shows the transcript around it, each turn clickable to play
  from there.
- `/transcript?episode=ID&start=S&end=E`: that transcript, an HTML fragment the page's script puts in place.
- `/audio/ID`: a catalogue episode's local file, with HTTP range requests (Starlette's FileResponse: 206,
  416 past the end), so the player can seek. Only files named by catalogue episodes and inside AUDIO_DIR are
  served; the URL names an episode, never a path. Feed episodes play from their `audio_url`.

On 127.0.0.1 the page is open; on any other address it asks for the token given to `gdr web` and keeps it in a
cookie (HttpOnly, SameSite=Strict).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from html import escape

from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import ConfigError, GdrError
from ..search.types import format_time
from ..settings import Settings
from ..storage.browse import EpisodeSummary
from .archive import DEFAULT_TRANSCRIPT_SECONDS, Answer, Archive, Transcript, opened_archive
from .listening import serve_asgi_until_interrupted

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "gdr_web_token"
RESULTS = 10
TRANSCRIPT_BEFORE = 30.0  # seconds of the conversation shown before a hit (its lead-up)

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:14px 24px}header h1{font-size:18px;margin:0}
main{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:20px;padding:18px 24px}
form.search{display:flex;gap:8px;flex-wrap:wrap;margin-bottom:14px}
form.search input[type=search]{flex:1 1 260px;padding:8px;font-size:15px}
select,button{padding:7px;font-size:14px}
.error{background:#fde8e8;border:1px solid #e0a0a0;padding:8px 12px;border-radius:6px}
.notice{color:#666}
ol.results{list-style:none;padding:0;margin:0}
.result{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:10px 14px;margin-bottom:10px;cursor:pointer}
.result:hover,.result.playing{border-color:#3b6fd8}
.meta{font-size:13px;color:#555}.meta b{color:#1d2433}
.question{border-left:3px solid #c7cede;padding-left:8px;color:#555;margin:6px 0}
.time{font-variant-numeric:tabular-nums}
aside section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:10px 14px;margin-bottom:14px}
audio{width:100%}
.turn{display:block;width:100%;text-align:left;background:none;border:0;border-radius:4px;padding:4px 6px;cursor:pointer;
font:inherit}
.turn:hover{background:#eef2fb}.turn.current{background:#e2eafc}
table{border-collapse:collapse;width:100%;font-size:13px}td,th{padding:3px 6px;border-bottom:1px solid #eee;text-align:left}
"""

_SCRIPT = """
const player = document.getElementById('player');
const transcript = document.getElementById('transcript');
const nowPlaying = document.getElementById('now-playing');
function playFrom(src, seconds) {
  const seek = () => { player.currentTime = seconds; player.play().catch(() => {}); };
  if (player.dataset.src !== src) {
    player.dataset.src = src;
    player.src = src;
    player.addEventListener('loadedmetadata', seek, {once: true});
    player.load();
  } else if (player.readyState >= 1) { seek(); } else { player.addEventListener('loadedmetadata', seek, {once: true}); }
}
async function showTranscript(episode, start, hit) {
  const from = Math.max(0, start - %(before)s);
  const response = await fetch('/transcript?' + new URLSearchParams({episode, start: from, end: from + %(length)s}));
  transcript.innerHTML = await response.text();
  const current = transcript.querySelector('[data-start="' + hit + '"]');
  if (current) { current.classList.add('current'); current.scrollIntoView({block: 'nearest'}); }
}
document.addEventListener('click', (event) => {
  const turn = event.target.closest('.turn');
  if (turn) {
    transcript.querySelectorAll('.turn.current').forEach(t => t.classList.remove('current'));
    turn.classList.add('current');
    playFrom(turn.closest('[data-src]').dataset.src, Number(turn.dataset.start));
    return;
  }
  const result = event.target.closest('.result');
  if (!result || !result.dataset.src) return;
  document.querySelectorAll('.result.playing').forEach(r => r.classList.remove('playing'));
  result.classList.add('playing');
  nowPlaying.textContent = result.dataset.title + ' · ' + result.dataset.time;
  playFrom(result.dataset.src, Number(result.dataset.start));
  showTranscript(result.dataset.episode, Number(result.dataset.start), result.dataset.start);
});
""" % {"before": TRANSCRIPT_BEFORE, "length": DEFAULT_TRANSCRIPT_SECONDS}


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>Podcast archive</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>Podcast archive</h1></header>{body}</body></html>", status_code=status)


def _options(values: list[tuple[str, str]], chosen: str | None, empty: str) -> str:
    items = [f"<option value=''>{escape(empty)}</option>"]
    for value, label in values:
        selected = " selected" if value == chosen else ""
        items.append(f"<option value='{escape(value, quote=True)}'{selected}>{escape(label)}</option>")
    return "".join(items)


class WebPage:
    """The page's handlers over one opened archive."""

    def __init__(self, archive: Archive):
        self.archive = archive

    def audio_src(self, episode: EpisodeSummary) -> str | None:
        """What the player plays: the local file through /audio (seekable), else the feed's audio_url."""
        if self.archive.audio_file(episode) is not None:
            return f"/audio/{escape(episode.episode_id, quote=True)}"
        return episode.audio_url

    def _result(self, answer: Answer, src: str | None) -> str:
        question = ""
        if answer.question:
            q = answer.question
            question = (f"<div class=question><span class=meta>{escape(q.speaker)} asked, "
                        f"<span class=time>{format_time(q.start)}</span></span><br>{escape(q.text)}</div>")
        attrs = {"data-episode": answer.episode_id, "data-start": f"{answer.start:g}", "data-title": answer.title,
                 "data-time": answer.time_range, "data-src": src or ""}
        attributes = " ".join(f"{k}='{escape(v, quote=True)}'" for k, v in attrs.items())
        return (f"<li class=result {attributes}><div class=meta><b>{escape(answer.title)}</b> · "
                f"{escape(answer.speaker)} · <span class=time>{answer.time_range}</span> · "
                f"relevance {answer.relevance:.2f}</div>{question}<div class=text>{escape(answer.text)}</div></li>")

    def home(self, request: Request) -> HTMLResponse:
        params = request.query_params
        query = params.get("q")
        speaker, episode = params.get("speaker") or None, params.get("episode") or None
        episodes = self.archive.episodes()
        speakers = self.archive.speakers()
        results, status = "", 200
        if query is not None:
            try:
                found = self.archive.search(query, RESULTS, speaker=speaker, episode=episode)
            except GdrError as exc:
                results, status = f"<p class=error role=alert>{escape(self.archive.settings.scrub(str(exc)))}</p>", 400
            else:
                by_id = {e.episode_id: e for e in episodes}
                items = "".join(self._result(a, self.audio_src(by_id[a.episode_id])) for a in found.answers)
                notice = f"<p class=notice>{escape(found.notice)}</p>" if found.notice else ""
                results = f"{notice}<ol class=results id=results>{items}</ol>"
        episode_choices = [(e.episode_id, f"{e.episode_id} · {e.title or e.file_name}") for e in episodes]
        form = (
            "<form class=search method=get action='/'>"
            f"<input type=search name=q placeholder='Ask the archive…' value='{escape(query or '', quote=True)}' autofocus>"
            f"<select name=speaker aria-label=speaker>{_options([(s.name, s.name) for s in speakers], speaker, 'any speaker')}"
            "</select>"
            f"<select name=episode aria-label=episode>{_options(episode_choices, episode, 'any episode')}"
            "</select><button type=submit>Search</button></form>"
        )
        rows = "".join(
            f"<tr><td>{escape(e.episode_id)}</td><td>{escape(e.title or '')}</td>"
            f"<td>{e.published.isoformat() if e.published else ''}</td>"
            f"<td class=time>{format_time(e.duration_seconds) if e.duration_seconds else '–'}</td>"
            f"<td>{escape(e.status)}</td></tr>" for e in episodes)
        aside = (
            "<aside><section><div id=now-playing class=meta>Click a result to play it</div>"
            "<audio id=player controls preload=metadata></audio></section>"
            "<section><h3>Transcript</h3><div id=transcript class=meta>The conversation around the moment you play "
            "shows here.</div></section>"
            "<section><h3>Episodes</h3><table id=episodes><tr><th>id</th><th>title</th><th>published</th>"
            f"<th>duration</th><th>status</th></tr>{rows}</table></section></aside>"
        )
        return _page(f"<main><div>{form}{results}</div>{aside}</main><script>{_SCRIPT}</script>", status)

    def transcript(self, request: Request) -> HTMLResponse:
        params = request.query_params
        try:
            start, end = float(params.get("start", "0")), params.get("end")
            found: Transcript = self.archive.transcript(params.get("episode", ""), start,
                                                        float(end) if end is not None else None)
        except ValueError:
            return HTMLResponse("<p class=error>start and end are seconds (numbers)</p>", status_code=400)
        except GdrError as exc:
            return HTMLResponse(f"<p class=error>{escape(self.archive.settings.scrub(str(exc)))}</p>", status_code=400)
        src = self.audio_src(found.episode) or ""
        turns = "".join(
            f"<button class=turn data-start='{t.start:g}'><span class=time>{format_time(t.start)}</span> "
            f"<b>{escape(t.speaker)}</b>: {escape(t.text)}</button>" for t in found.turns)
        return HTMLResponse(f"<div data-src='{escape(src, quote=True)}' data-episode='"
                            f"{escape(found.episode.episode_id, quote=True)}'><div class=meta><b>"
                            f"{escape(found.episode.title or '')}</b></div>{turns}</div>")

    def audio(self, request: Request) -> Response:
        try:
            episode = self.archive.episode(request.path_params["episode_id"])
        except GdrError as exc:
            return PlainTextResponse(self.archive.settings.scrub(str(exc)), status_code=404)
        path = self.archive.audio_file(episode)
        if path is None:
            return PlainTextResponse(f"episode {episode.episode_id!r} has no local audio file", status_code=404)
        return FileResponse(path)


class _TokenGate(BaseHTTPMiddleware):
    """Off 127.0.0.1: every request needs the token, from the cookie the login form sets."""

    def __init__(self, app: Callable, token: str):
        super().__init__(app)
        self.token = token

    def _valid(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def dispatch(self, request: Request, call_next: Callable) -> Response:
        if request.url.path == "/login" and request.method == "POST":
            form = await request.form()
            if not self._valid(str(form.get("token", ""))):
                return _login_page("That is not the token.", 401)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return response
        if not self._valid(request.cookies.get(TOKEN_COOKIE)):
            return _login_page("This archive asks for its token.", 401)
        return await call_next(request)


def _login_page(message: str, status: int) -> HTMLResponse:
    return _page(f"<main><form method=post action='/login'><p>{escape(message)}</p>"
                 "<input type=password name=token aria-label=token autofocus> <button>Enter</button></form></main>", status)


async def _not_found(request: Request, exc: Exception) -> Response:
    """Any other address (a path with `..` or `/` in an episode id lands here: ids are one path segment)."""
    return PlainTextResponse(f"nothing at {request.url.path} (the page is at /, audio at /audio/EPISODE_ID)",
                             status_code=404)


def build_web_app(archive: Archive, token: str | None = None) -> Starlette:
    page = WebPage(archive)
    app = Starlette(exception_handlers={404: _not_found}, routes=[
        Route("/", page.home), Route("/transcript", page.transcript),
        Route("/audio/{episode_id}", page.audio, methods=["GET", "HEAD"]),
    ])
    if token:
        app.add_middleware(_TokenGate, token=token)
    return app


def serve_web(settings: Settings, host: str, port: int, *, token: str | None = None,
              on_listening: Callable[[str], None] | None = None) -> None:
    """Serve the page on HOST:PORT until interrupted; any address but 127.0.0.1 requires a token."""
    if host not in LOCAL_HOSTS and not token:
        raise ConfigError(f"gdr web on {host} would open the archive to the network: give --token (or WEB_TOKEN) "
                          "for the page to ask for, or serve on 127.0.0.1")
    with opened_archive(settings) as archive:
        serve_asgi_until_interrupted(build_web_app(archive, token), host, port, on_listening)
