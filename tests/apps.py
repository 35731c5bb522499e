"""An app for worker processes started by the tests (``-A tests.apps:app``).

Settings come from the environment. Every handler call appends the request id
and the handler's name to the file named by ``ASYNCLLM_TEST_CALLS``, so a test
can count calls made in another process.
"""

from __future__ import annotations

import os
from pathlib import Path

from asyncllm import AsyncLLM, AsyncRequest, ChatResponse

app = AsyncLLM("tests")


def record_call(request: AsyncRequest, handler: str) -> int:
    """Note one call; returns how often this handler saw this request so far."""
    calls = Path(os.environ["ASYNCLLM_TEST_CALLS"])
    line = f"{request.id} {handler}\n"
    with calls.open("a", encoding="utf-8") as file:
        file.write(line)
    return calls.read_text(encoding="utf-8").count(line)


@app.handler(default=True)
def echo(request: AsyncRequest) -> ChatResponse:
    """Answer with the last message's text."""
    record_call(request, "echo")
    text = request.request.messages[-1].content
    return ChatResponse.from_text(str(text), model="echo")


@app.handler(name="always-fail")
def always_fail(request: AsyncRequest) -> ChatResponse:
    """Fail every time, like a provider that is down."""
    record_call(request, "always-fail")
    raise RuntimeError("the provider is down")


@app.handler(name="fail-once")
def fail_once(request: AsyncRequest) -> ChatResponse:
    """Fail the first call for each request, then answer."""
    if record_call(request, "fail-once") == 1:
        raise ConnectionError("the first call drops its connection")
    return ChatResponse.from_text("second time lucky", model="echo")
