"""Deepgram pre-recorded transcription (nova-3, diarized) through the official SDK.

`parse_deepgram_response` turns a raw `/v1/listen` JSON body into the provider-neutral Transcript;
it needs no network, so saved raw responses can be re-formatted at any time.

`DeepgramTranscriber` makes one request per file with the SDK's own retries off: retries belong to
the orchestration, which knows what failed from the error class (see `errors.py`). One transcriber
is built per run; its semaphore caps the run's simultaneous requests at DEEPGRAM_MAX_CONCURRENCY.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
from deepgram import DeepgramClient, DeepgramClientEnvironment
from deepgram.core.api_error import ApiError

from ...errors import PermanentProviderError, ProviderError, TransientProviderError
from ...settings import Settings
from ...transcript import Span, Transcript, TranscriptionResult, Word
from ..audio import audio_seconds
from ..http import status_error
from . import AudioProgress

BASE_TIMEOUT = 60.0  # seconds of request timeout before any audio
TIMEOUT_PER_AUDIO_SECOND = 0.5  # long episodes take longer: the SDK's flat 60 s default times them out


def _model_name(metadata: dict[str, Any]) -> str:
    info = metadata.get("model_info") or {}
    for model_uuid in metadata.get("models") or []:
        entry = info.get(model_uuid) or {}
        if entry.get("name"):
            return f"{entry['name']}" + (f"@{entry['version']}" if entry.get("version") else "")
    return "unknown"


def _spans(items: list[dict[str, Any]], counts: list[int], n_words: int) -> list[Span]:
    """Provider groupings as word-index ranges; words are assigned in order, count by count."""
    spans, cursor = [], 0
    for item, count in zip(items, counts, strict=True):
        if count <= 0 or cursor >= n_words:
            continue
        last = min(cursor + count, n_words) - 1
        spans.append(Span(float(item["start"]), float(item["end"]), item.get("speaker"), cursor, last))
        cursor = last + 1
    return spans


def parse_deepgram_response(raw: dict[str, Any], options: dict[str, Any] | None = None) -> Transcript:
    """Provider-neutral transcript of a Deepgram response; raises if the body is not a transcript.

    The SDK does not raise on a malformed 2xx body (a callback-style `{"request_id"}` or `{}` comes
    back as a model without results), so this is where such bodies are caught.
    """
    results = raw.get("results") if isinstance(raw, dict) else None
    metadata = raw.get("metadata") if isinstance(raw, dict) else None
    if not isinstance(results, dict) or not isinstance(metadata, dict) or not results.get("channels"):
        raise PermanentProviderError(
            "Deepgram returned a body that is not a transcript (no results.channels / metadata); "
            f"top-level fields: {sorted(raw) if isinstance(raw, dict) else type(raw).__name__}"
        )
    alternatives = results["channels"][0].get("alternatives") or [{}]
    best = alternatives[0]
    words = [
        Word(
            text=str(w["word"]),
            start=float(w["start"]),
            end=float(w["end"]),
            speaker=w.get("speaker"),
            punctuated=w.get("punctuated_word"),
            confidence=w.get("confidence"),
        )
        for w in best.get("words") or []
    ]
    utterances = None
    if results.get("utterances") is not None:
        items = [u for u in results["utterances"] if u.get("channel", 0) == 0]
        utterances = _spans(items, [len(u.get("words") or []) for u in items], len(words))
    paragraphs = None
    if best.get("paragraphs"):
        items = best["paragraphs"].get("paragraphs") or []
        paragraphs = _spans(items, [int(p.get("num_words") or 0) for p in items], len(words))
    language = results["channels"][0].get("detected_language") or (options or {}).get("language")
    return Transcript(
        provider="deepgram",
        model=_model_name(metadata),
        duration=float(metadata.get("duration") or 0.0),
        words=words,
        options=dict(options or {}),
        language=language,
        utterances=utterances,
        paragraphs=paragraphs,
    )


def _provider_error(exc: ApiError, api_key: str = "") -> ProviderError:
    """Our error class for a Deepgram HTTP error, from its status, `err_code` and `err_msg` (never the
    headers; the key is masked should the body quote it back)."""
    status = exc.status_code or 0
    body = exc.body if isinstance(exc.body, dict) else {}
    if api_key:
        body = {k: str(v).replace(api_key, "***") for k, v in body.items()}
    message = f"Deepgram answered HTTP {status} ({body.get('err_code') or 'no error code'})"
    return status_error(
        status, message, exc.headers, auth_hint="check DEEPGRAM_API_KEY",
        quota_hint="the Deepgram project is out of credit", detail=body.get("err_msg") or "no error message",
    )


class DeepgramTranscriber:
    """Deepgram `/v1/listen` with diarization, paragraphs and utterances; one request per file."""

    provider = "deepgram"
    uses_speaker_count = False

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DeepgramClientEnvironment.PRODUCTION.base,
        model: str = "nova-3",
        language: str = "en",
        max_concurrency: int = 10,
        base_timeout: float = BASE_TIMEOUT,
    ) -> None:
        self.model = model
        self.language = language
        self.max_concurrency = max_concurrency
        self.base_timeout = base_timeout
        self._request_slots = threading.BoundedSemaphore(max_concurrency)  # shared by every episode of the run
        self._api_key = api_key  # only to mask it in error texts
        base = base_url.rstrip("/")
        ws = "ws" + base.removeprefix("http")  # http -> ws, https -> wss
        self._client = DeepgramClient(
            api_key=api_key,
            environment=DeepgramClientEnvironment(base=base, production=ws, agent=ws, agent_rest=base),
            timeout=base_timeout,
            max_retries=0,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> DeepgramTranscriber:
        return cls(
            settings.require_secret("deepgram_api_key", "TRANSCRIBER=deepgram"),
            base_url=settings.deepgram_base_url,
            model=settings.deepgram_model,
            language=settings.deepgram_language,
            max_concurrency=settings.deepgram_max_concurrency,
            base_timeout=settings.deepgram_timeout,
        )

    def options(self) -> dict[str, Any]:
        """The request's query parameters, exactly as sent (they are also the SDK call's keywords)."""
        return {
            "model": self.model,
            "language": self.language,
            "smart_format": True,
            "punctuate": True,
            "paragraphs": True,
            "diarize": True,
            "utterances": True,
        }

    def timeout_for(self, audio_path: Path) -> float:
        return self.base_timeout + TIMEOUT_PER_AUDIO_SECOND * audio_seconds(audio_path)

    def transcribe(self, audio_path: Path, progress: AudioProgress | None = None, speakers: int | None = None
                   ) -> TranscriptionResult:
        """One request: the progress is all or nothing. Deepgram's diarizer finds the voices itself (`speakers`
        is not sent)."""
        audio = audio_path.read_bytes()  # bytes: a stream or file object breaks the SDK's request body
        timeout = self.timeout_for(audio_path)
        with self._request_slots:
            raw = self._request(audio, timeout)
        transcript = parse_deepgram_response(raw, self.options())
        if progress is not None:
            progress(transcript.duration, transcript.duration)
        return TranscriptionResult(transcript=transcript, raw=raw)

    def _request(self, audio: bytes, timeout: float) -> dict[str, Any]:
        """The response body as JSON, or one of our ProviderErrors (raised `from None`: the SDK's
        exceptions hold the request, whose headers carry the key).

        The body is read as it came over the wire, not dumped back from the SDK's pydantic model: the saved
        raw response is then exactly Deepgram's, and the dump cost as much CPU as the SDK's own parsing
        (~0.15 s per 40-minute episode, on the one GIL every episode in flight shares)."""
        try:
            response = self._client.listen.v1.media.with_raw_response.transcribe_file(
                request=audio, **self.options(), request_options={"timeout": timeout, "max_retries": 0}
            )
        except ApiError as exc:
            raise _provider_error(exc, self._api_key) from None
        except httpx.TimeoutException:
            raise TransientProviderError(f"Deepgram did not answer within {timeout:.0f} s") from None
        except httpx.TransportError as exc:
            raise TransientProviderError(f"Deepgram connection failed ({type(exc).__name__})") from None
        return response._response.json()  # the SDK's HttpResponse keeps the httpx response only privately
