"""What a provider call costs at the configured list prices (USD); local providers cost nothing."""

from __future__ import annotations

from ..settings import Settings


def estimate_cost(settings: Settings, provider: str, audio_seconds: float, tokens: int) -> float:
    if provider == "deepgram":
        return audio_seconds / 60 * settings.deepgram_price_per_minute
    if provider == "openai":
        return tokens / 1e6 * settings.openai_price_per_million_tokens
    return 0.0
