"""Classifying a provider's HTTP errors: rate limits, terminal errors, retries."""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from asyncllm import (
    ProviderError,
    RetryAfter,
    TerminalError,
    parse_duration,
    provider_error,
)


def openai_error(
    message: str, kind: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """An error body in the shape OpenAI's API sends."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


RATE_LIMITED = openai_error(
    "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): "
    "Limit 30000, Used 29950, Requested 812. Please try again in 1.524s.",
    "tokens",
    "rate_limit_exceeded",
)
QUOTA = openai_error(
    "You exceeded your current quota, please check your plan and billing details.",
    "insufficient_quota",
    "insufficient_quota",
)
CONTEXT = openai_error(
    "This model's maximum context length is 128000 tokens. However, your messages "
    "resulted in 131072 tokens. Please reduce the length of the messages.",
    "invalid_request_error",
    "context_length_exceeded",
    "messages",
)
BAD_KEY = openai_error(
    "Incorrect API key provided: sk-abc***xyz.",
    "invalid_request_error",
    "invalid_api_key",
)
SERVER = openai_error(
    "The server had an error while processing your request. Sorry about that!",
    "server_error",
    None,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10", 10.0),
        ("0.5", 0.5),
        ("156ms", 0.156),
        ("9.038s", 9.038),
        ("1m30s", 90.0),
        ("2h0m1s", 7201.0),
        ("6m0s", 360.0),
        ("250us", 0.00025),
        ("  3s ", 3.0),
        ("-4", 0.0),
    ],
)
def test_parse_duration_reads_seconds_and_go_durations(
    text: str, seconds: float
) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1m30", "s", "1 m", "nan", "inf", "5d"])
def test_parse_duration_returns_none_for_what_is_not_a_duration(text: str) -> None:
    assert parse_duration(text) is None


def test_a_rate_limit_with_retry_after_waits_that_long() -> None:
    error = provider_error(429, RATE_LIMITED, {"Retry-After": "7"})

    assert isinstance(error, RetryAfter)
    assert error.seconds == 7.0
    assert "rate_limit_exceeded" in error.message


def test_retry_after_ms_wins_over_retry_after_and_is_at_least_one_second() -> None:
    error = provider_error(
        429, RATE_LIMITED, {"retry-after-ms": "2500", "retry-after": "9"}
    )
    short = provider_error(429, RATE_LIMITED, {"retry-after-ms": "20"})

    assert isinstance(error, RetryAfter)
    assert error.seconds == 2.5
    assert isinstance(short, RetryAfter)
    assert short.seconds == 1.0


def test_a_retry_after_http_date_is_read_as_the_time_until_then() -> None:
    error = provider_error(
        429, RATE_LIMITED, {"Retry-After": formatdate(time.time() + 30, usegmt=True)}
    )

    assert isinstance(error, RetryAfter)
    assert 25 <= error.seconds <= 31


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        (
            {
                "x-ratelimit-reset-requests": "156ms",
                "x-ratelimit-reset-tokens": "9.038s",
            },
            9.038,
        ),
        ({"X-RateLimit-Reset-Tokens": "1m30s"}, 90.0),
        ({"x-ratelimit-reset-requests": "156ms"}, 1.0),
        ({"x-ratelimit-reset-tokens": "garbage"}, 5.0),
        ({}, 5.0),
    ],
)
def test_a_rate_limit_without_retry_after_waits_for_the_longest_reset(
    headers: dict[str, str], seconds: float
) -> None:
    error = provider_error(429, RATE_LIMITED, headers)

    assert isinstance(error, RetryAfter)
    assert error.seconds == pytest.approx(seconds)


def test_an_exhausted_quota_is_terminal_not_a_rate_limit() -> None:
    error = provider_error(429, QUOTA, {"retry-after": "1"})

    assert isinstance(error, TerminalError)
    assert error.code == "insufficient_quota"
    assert error.status_code == 429
    assert "quota" in error.message


def test_an_exhausted_quota_named_only_in_the_type_is_terminal() -> None:
    body = openai_error("You exceeded your current quota.", "insufficient_quota", None)

    assert isinstance(provider_error(429, body), TerminalError)


def test_a_context_length_error_is_terminal_with_its_code() -> None:
    error = provider_error(400, CONTEXT)

    assert isinstance(error, TerminalError)
    assert error.code == "context_length_exceeded"
    assert error.status_code == 400
    assert error.message.startswith("This model's maximum context length")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_terminal(status: int) -> None:
    error = provider_error(status, BAD_KEY)

    assert isinstance(error, TerminalError)
    assert error.status_code == status
    assert error.code == "invalid_api_key"


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504])
def test_server_errors_are_retried_as_provider_errors(status: int) -> None:
    error = provider_error(status, SERVER)

    assert isinstance(error, ProviderError)
    assert error.status_code == status
    assert error.code is None
    assert "server had an error" in str(error)


def test_an_error_without_a_body_names_the_status() -> None:
    error = provider_error(502)

    assert isinstance(error, ProviderError)
    assert str(error) == "provider answered 502"


def test_an_error_given_as_plain_text_keeps_its_message() -> None:
    error = provider_error(400, {"error": "model 'llama9' not found"})

    assert isinstance(error, TerminalError)
    assert error.message == "model 'llama9' not found"


def test_an_error_with_top_level_fields_keeps_message_and_code() -> None:
    body = {
        "object": "error",
        "message": "max_tokens must be at least 1, got -1.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    error = provider_error(400, body)

    assert isinstance(error, TerminalError)
    assert error.message == "max_tokens must be at least 1, got -1."
    assert error.code == "400"


RECORDED = Path(__file__).parent / "data" / "responses"


def recorded(name: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A recorded provider error: status, body and headers."""
    envelope = json.loads((RECORDED / name).read_text(encoding="utf-8"))
    return envelope["status_code"], envelope["body"], envelope["headers"]


def test_recorded_provider_errors_are_classified_by_status_and_code() -> None:
    context = provider_error(*recorded("13-error-400-context-length.json"))
    bad_key = provider_error(*recorded("14-error-401-invalid-api-key.json"))
    limited = provider_error(*recorded("15-error-429-rate-limit-with-headers.json"))
    server = provider_error(*recorded("16-error-500-server-error.json"))

    assert isinstance(context, TerminalError)
    assert (context.status_code, context.code) == (400, "context_length_exceeded")
    assert isinstance(bad_key, TerminalError)
    assert (bad_key.status_code, bad_key.code) == (401, "invalid_api_key")
    assert isinstance(limited, RetryAfter)
    assert limited.seconds == 6.0  # retry-after wins over the 5.642s reset
    assert isinstance(server, ProviderError)
    assert (server.status_code, server.code) == (500, None)


def test_a_recorded_rate_limit_without_retry_after_waits_for_its_resets() -> None:
    status, body, headers = recorded("15-error-429-rate-limit-with-headers.json")
    del headers["retry-after"]

    error = provider_error(status, body, headers)

    assert isinstance(error, RetryAfter)
    assert error.seconds == pytest.approx(5.642)
