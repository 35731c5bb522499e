"""The exception tree: every error asyncllm raises derives from `AsyncLLMError`."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AsyncLLMError",
    "ConfigurationError",
    "HandlerError",
    "InvalidMessage",
    "PayloadTooLarge",
    "QueueSetupError",
    "RequestFailed",
    "ResultError",
    "ResultExpired",
    "ResultNotFound",
    "ResultTimeout",
    "RetryAfter",
    "TerminalError",
    "TransportError",
    "UnknownHandler",
]


class AsyncLLMError(Exception):
    """The root of every exception raised by asyncllm."""


class ConfigurationError(AsyncLLMError, ValueError):
    """A setting is missing or has a value that cannot work."""


class QueueSetupError(ConfigurationError):
    """A queue is missing or its attributes do not fit the worker."""


class TransportError(AsyncLLMError):
    """The queue service refused or failed a call.

    The original botocore or kombu exception is chained as ``__cause__``.
    """


class InvalidMessage(AsyncLLMError, ValueError):
    """A request or response does not match the message schema.

    Attributes:
        reason: A one-line explanation naming the offending field or value.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PayloadTooLarge(InvalidMessage):
    """An encoded message is larger than the queue accepts.

    Attributes:
        size: The encoded size in bytes.
        limit: The queue's limit in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        reason = (
            f"payload {size:,} B exceeds queue limit {limit:,} B; shorten the "
            "request or raise the queue's MaximumMessageSize (at most 1 MiB)"
        )
        super().__init__(reason)
        self.size = size
        self.limit = limit


class UnknownHandler(AsyncLLMError, LookupError):
    """A request names a handler that the app does not have."""


class HandlerError(AsyncLLMError):
    """Base of the exceptions a handler raises to steer the worker."""


class TerminalError(HandlerError):
    """Raised by a handler when retrying the request cannot help.

    The worker publishes one error response at once and moves the request to the
    dead-letter queue without further attempts.

    Args:
        message: What went wrong, safe to show the caller (no prompt text).
        code: A short machine-readable code, for example ``"context_length_exceeded"``.
        status_code: The provider's HTTP status, when the error came from one.
    """

    def __init__(
        self, message: str, *, code: str | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status_code = status_code


class RetryAfter(HandlerError):
    """Raised by a handler to try the request again after a delay.

    The worker frees its slot and makes the message visible again after
    ``seconds``; see the README section on rate limits for how this counts
    against the queue's receive limit.

    Args:
        seconds: How long to wait before the next attempt, 0 to 43,200.
        message: Why, for the logs and the error response if attempts run out.
    """

    def __init__(self, seconds: float, message: str = "rate limited") -> None:
        super().__init__(f"{message}; retry after {seconds:g} s")
        self.seconds = max(0.0, min(float(seconds), 43_200.0))
        self.message = message


class ResultError(AsyncLLMError):
    """Base of the errors a result lookup raises."""


class ResultNotFound(ResultError, LookupError):
    """No request with this id is known to the result store or the response queue."""


class ResultExpired(ResultError, LookupError):
    """The request's result was kept for longer than the store's TTL and is gone."""


class ResultTimeout(ResultError, TimeoutError):
    """The request is known but was not answered within the time allowed."""


class RequestFailed(ResultError):
    """The request was answered with an error response.

    Attributes:
        response: The `AsyncResponse` that carries the error.
    """

    def __init__(self, message: str, response: Any) -> None:
        super().__init__(message)
        self.response = response
