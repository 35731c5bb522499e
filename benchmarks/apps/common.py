"""What every system's harness shares: settings from the environment, payloads."""

from __future__ import annotations

import os
from typing import Any

from benchmarks._env import ACCESS_KEY, HOST, REGION, SECRET_KEY
from benchmarks.provider import completion

__all__ = [
    "ACCESS_KEY",
    "CHAT_REQUEST",
    "REGION",
    "SECRET_KEY",
    "concurrency",
    "endpoint_url",
    "mode",
    "noop_completion",
    "prefix",
    "provider_url",
    "queue_names",
    "sqs_port",
]

#: The chat request every system carries, in the chat-completions shape.
CHAT_REQUEST: dict[str, Any] = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Say hello in one word."}],
}


def sqs_port() -> int:
    """The local SQS endpoint's port (``BENCH_SQS_PORT``)."""
    return int(os.environ["BENCH_SQS_PORT"])


def endpoint_url() -> str:
    """The local SQS endpoint, always on 127.0.0.1."""
    return f"http://{HOST}:{sqs_port()}"


def prefix() -> str:
    """The run's queue-name prefix (``BENCH_PREFIX``); fresh for every run."""
    return os.environ["BENCH_PREFIX"]


def queue_names() -> tuple[str, str]:
    """The run's request and response queue names."""
    return f"{prefix()}-requests", f"{prefix()}-responses"


def mode() -> str:
    """``noop`` (answer at once) or ``llm`` (call the fake provider)."""
    return os.environ.get("BENCH_MODE", "noop")


def provider_url() -> str:
    """The fake provider's base URL (``BENCH_PROVIDER_URL``), on 127.0.0.1."""
    return os.environ.get("BENCH_PROVIDER_URL", f"http://{HOST}:8000")


def concurrency() -> int:
    """Calls in flight the worker is configured for (sizes HTTP pools)."""
    return int(os.environ.get("BENCH_CONCURRENCY", "10"))


def noop_completion() -> dict[str, Any]:
    """The answer of the no-op handlers."""
    return completion(CHAT_REQUEST["model"])
