"""Deepgram pre-recorded transcription (nova-3, diarized) through the official SDK.

`parse_deepgram_response` turns a raw `/v1/listen` JSON body into the provider-neutral Transcript;
it needs no network, so saved raw responses can be re-formatted at any time.
"""

from __future__ import annotations

from typing import Any

from ..errors import PermanentProviderError
from ..transcript import Span, Transcript, Word


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
    """Provider-neutral transcript of a Deepgram response; raises if the body is not a transcript."""
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
