"""Classifying a provider's HTTP error into the worker's three kinds of failure.

The rule reads the status *and* ``error.code``: a 429 is usually a rate limit
(retry later) but ``insufficient_quota`` is not going to pass by itself.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from ._errors import HandlerError, RetryAfter, TerminalError

__all__ = ["ProviderError", "parse_duration", "provider_error"]

#: Statuses that a retry can fix.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: 429 codes that no retry fixes.
_NOT_RETRYABLE_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class ProviderError(HandlerError):
    """A provider answered with an error that a later attempt may not see.

    The worker treats it like any other exception: retried with backoff, then
    the error response and the dead-letter queue.

    Attributes:
        status_code: The HTTP status.
        code: The provider's ``error.code``, if any.
    """

    def __init__(self, message: str, *, status_code: int, code: str | None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


def parse_duration(text: str) -> float | None:
    """Parse a rate-limit duration such as ``"10"``, ``"156ms"`` or ``"1m30s"``.

    Returns:
        Seconds, or None when the text is not a duration.
    """
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def provider_error(
    status_code: int,
    body: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> HandlerError:
    """Return the exception a handler should raise for a provider's error.

    Args:
        status_code: The HTTP status of the provider's answer.
        body: The decoded error body (``{"error": {"message", "type",
            "code", "param"}}`` in the OpenAI shape), if any.
        headers: The response headers, for ``retry-after`` and
            ``x-ratelimit-reset-*``. Names are matched case-insensitively.

    Returns:
        `RetryAfter` for a rate limit, `TerminalError` for a request that
        cannot succeed (400, 401, 403, 404, 422, an exhausted quota), and
        `ProviderError` (retried with backoff) for anything else.
    """
    body = body or {}
    error = body.get("error") or {}
    if not isinstance(error, Mapping):
        # Some servers send {"error": "text"}, or the fields at the top level.
        error = {"message": error}
    code = error.get("code", body.get("code"))
    message = str(
        error.get("message")
        or body.get("message")
        or f"provider answered {status_code}"
    )
    code_text = str(code) if code is not None else None
    # OpenAI names an exhausted quota in "code" and in "type"; some servers in
    # only one of them.
    exhausted = not _NOT_RETRYABLE_CODES.isdisjoint({code_text, error.get("type")})
    if status_code == 429 and not exhausted:
        delay = _retry_delay(headers or {})
        return RetryAfter(delay, f"provider rate limit ({code_text or status_code})")
    if status_code in RETRYABLE_STATUSES and not exhausted:
        return ProviderError(message, status_code=status_code, code=code_text)
    return TerminalError(message, code=code_text, status_code=status_code)


def _retry_delay(headers: Mapping[str, str], default: float = 5.0) -> float:
    """Read the wait from ``retry-after``, else the longest rate-limit reset."""
    lowered = {name.lower(): value for name, value in headers.items()}
    retry_after_ms = parse_duration(lowered.get("retry-after-ms", ""))
    if retry_after_ms is not None:
        return max(1.0, retry_after_ms / 1000)
    retry_after = _retry_after_seconds(lowered.get("retry-after", ""))
    if retry_after is not None:
        return max(1.0, retry_after)
    resets = [
        parse_duration(lowered.get(f"x-ratelimit-reset-{kind}", ""))
        for kind in ("requests", "tokens")
    ]
    known = [seconds for seconds in resets if seconds is not None]
    return max(1.0, *known) if known else default


def _retry_after_seconds(text: str) -> float | None:
    """Read ``retry-after``: seconds, a duration, or an HTTP date (RFC 9110)."""
    seconds = parse_duration(text)
    if seconds is not None or not text.strip():
        return seconds
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())
