"""HTTP status -> our error classes, and the provider's Retry-After: one mapping for every caller
(Deepgram, OpenAI, podcast feeds), so a status is transient or permanent the same way everywhere."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from contextlib import suppress

from ..errors import (
    AuthenticationError,
    PermanentProviderError,
    ProviderError,
    QuotaExhaustedError,
    TransientProviderError,
)

# 408 timeout, 409 conflict (a concurrent request on the same resource), 429 rate limit: retrying later can succeed.
TRANSIENT_STATUSES = frozenset({408, 409, 429})


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds a server asked us to wait (`retry-after-ms`, or `Retry-After` as seconds or an HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    with suppress(KeyError, ValueError):
        return max(0.0, float(lowered["retry-after-ms"]) / 1000)
    value = lowered.get("retry-after")
    if value is None:
        return None
    with suppress(ValueError):
        return max(0.0, float(value))
    with suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return None


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUSES or status >= 500


def status_error(
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    auth_hint: str | None = None,
    quota_hint: str | None = None,
    detail: str | None = None,
) -> ProviderError:
    """Our error for an HTTP error status: transient (with Retry-After) for 408/409/429/5xx; with an
    `auth_hint`, 401/403 are an AuthenticationError (the run stops); with a `quota_hint`, 402 is a
    QuotaExhaustedError; anything else is permanent (`detail` appended)."""
    if is_transient_status(status):
        return TransientProviderError(message, status=status, retry_after=retry_after_seconds(headers or {}))
    if auth_hint and status in (401, 403):
        return AuthenticationError(f"{message}: {auth_hint}", status=status)
    if quota_hint and status == 402:
        return QuotaExhaustedError(f"{message}: {quota_hint}", status=status)
    return PermanentProviderError(f"{message}: {detail}" if detail else message, status=status)
