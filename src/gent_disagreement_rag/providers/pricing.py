"""What a provider call costs at the configured list prices (USD). Each provider in the registry
(providers/registry.py) prices its calls with these; local providers cost nothing."""

from __future__ import annotations

from ..settings import Settings


def deepgram_cost(settings: Settings, audio_seconds: float) -> float:
    return audio_seconds / 60 * settings.deepgram_price_per_minute


def openai_cost(settings: Settings, tokens: int) -> float:
    return tokens / 1e6 * settings.openai_price_per_million_tokens
