"""Error classes shared by every stage.

Provider errors carry whether a retry can succeed, so the orchestration retries only what can
(429, 5xx, timeouts) and fails at once on what cannot (corrupt audio, bad key, no credit).
Messages never contain secrets: they are built from status codes and provider error codes.
"""

from __future__ import annotations


class GdrError(Exception):
    """Base of every error this project raises on purpose (the CLI prints these without a traceback)."""


class ConfigError(GdrError):
    """A setting or an input file is wrong; the message names the file and the field."""


class CatalogueError(ConfigError):
    """The episodes catalogue is malformed."""


class DatabaseUnavailableError(GdrError):
    """Postgres cannot be reached, or the pool had no free connection within its timeout."""


class SchemaOutOfDateError(GdrError):
    """A command that only reads found the database's schema behind this version's migrations (reads never migrate)."""


class ProviderError(GdrError):
    """A transcription or embedding provider call failed."""

    transient: bool = False

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class TransientProviderError(ProviderError):
    """Rate limits, 5xx, timeouts, dropped connections: retrying later can succeed."""

    transient = True


class PermanentProviderError(ProviderError):
    """Corrupt audio, bad request: retrying the same call cannot succeed."""


class UndecodableAudioError(PermanentProviderError):
    """The audio file cannot be decoded (or holds no audio): it fails the same way until the file changes."""


class AuthenticationError(PermanentProviderError):
    """Bad or missing API key (401/403): every episode would fail the same way, so the run stops."""


class QuotaExhaustedError(PermanentProviderError):
    """Out of credit (Deepgram 402, OpenAI insufficient_quota): every episode would fail the same way."""


class QualityGateError(GdrError):
    """The transcript does not cover the audio well enough to be trusted (truncated, empty, long gaps)."""
