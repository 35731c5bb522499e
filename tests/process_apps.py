"""Handlers for tests that run workers, configured by environment variables.

Subprocess workers load ``tests.process_apps:app``, whose settings come from the
``ASYNCLLM_*`` variables the test sets. In-process tests call `install` on an app
of their own. Every handler call appends ``"<request id> start <pid> <time>"``
and ``"<request id> end <pid> <time>"`` lines to the file named by
``ASYNCLLM_TEST_CALLS`` (when set), so a test can count calls per request id
across processes.

Handlers:

* ``slow`` (the default): sleeps ``ASYNCLLM_TEST_SLEEP`` seconds (default 0),
  then echoes the last message reversed.
* ``slow_sync``: the same as a plain function, run on the handler thread pool.
* ``retry_once``: raises ``RetryAfter(ASYNCLLM_TEST_RETRY_SECONDS)`` (default
  2) on the first ``ASYNCLLM_TEST_RETRIES`` calls (default 1) for a request id,
  then succeeds.
* ``terminal``: raises `TerminalError` with code ``"test_terminal"``.
* ``overtime``: sleeps ``ASYNCLLM_TEST_SLEEP`` seconds with a timeout of
  ``ASYNCLLM_TEST_TIMEOUT`` seconds (default 0.5).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from asyncllm import AsyncLLM, AsyncRequest, ChatResponse, RetryAfter, TerminalError

CALLS_ENV = "ASYNCLLM_TEST_CALLS"
SLEEP_ENV = "ASYNCLLM_TEST_SLEEP"
RETRY_SECONDS_ENV = "ASYNCLLM_TEST_RETRY_SECONDS"
RETRIES_ENV = "ASYNCLLM_TEST_RETRIES"
TIMEOUT_ENV = "ASYNCLLM_TEST_TIMEOUT"


def log_call(request_id: str, event: str) -> None:
    """Append one call event to the call log, if there is one."""
    path = os.environ.get(CALLS_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"{request_id} {event} {os.getpid()} {time.time():.3f}\n")


def read_calls(path: Path) -> list[tuple[str, str, int, float]]:
    """Return the call log as ``(request id, event, pid, time)`` tuples."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        request_id, event, pid, when = line.split()
        rows.append((request_id, event, int(pid), float(when)))
    return rows


def count_calls(path: Path, request_id: str, event: str = "start") -> int:
    """How many call events of one kind the log holds for a request id."""
    return sum(1 for row in read_calls(path) if row[:2] == (request_id, event))


def _sleep_seconds() -> float:
    return float(os.environ.get(SLEEP_ENV, "0"))


def _echo(request: AsyncRequest) -> ChatResponse:
    text = request.request.messages[-1].content
    return ChatResponse.from_text(str(text)[::-1], model="process-test")


async def slow(request: AsyncRequest) -> ChatResponse:
    log_call(request.id, "start")
    await asyncio.sleep(_sleep_seconds())
    log_call(request.id, "end")
    return _echo(request)


def slow_sync(request: AsyncRequest) -> ChatResponse:
    log_call(request.id, "start")
    time.sleep(_sleep_seconds())
    log_call(request.id, "end")
    return _echo(request)


async def retry_once(request: AsyncRequest) -> ChatResponse:
    path = os.environ.get(CALLS_ENV)
    earlier = count_calls(Path(path), request.id) if path else 0
    log_call(request.id, "start")
    if earlier < int(os.environ.get(RETRIES_ENV, "1")):
        log_call(request.id, "retry")
        raise RetryAfter(float(os.environ.get(RETRY_SECONDS_ENV, "2")), "test limit")
    log_call(request.id, "end")
    return _echo(request)


async def terminal(request: AsyncRequest) -> ChatResponse:
    log_call(request.id, "start")
    raise TerminalError("the test says no", code="test_terminal", status_code=400)


async def overtime(request: AsyncRequest) -> ChatResponse:
    log_call(request.id, "start")
    await asyncio.sleep(_sleep_seconds())
    log_call(request.id, "end")
    return _echo(request)


def install(app: AsyncLLM, overtime_limit: float = 0.5) -> AsyncLLM:
    """Register this module's handlers on an app and return it.

    Args:
        app: The app.
        overtime_limit: The ``timeout_seconds`` of the ``overtime`` handler.
    """
    app.handler(default=True)(slow)
    app.handler(slow_sync)
    app.handler(retry_once)
    app.handler(terminal)
    app.handler(timeout_seconds=overtime_limit)(overtime)
    return app


app = install(AsyncLLM("process-test"), float(os.environ.get(TIMEOUT_ENV, "0.5")))
