"""The OpenAI-compatible example handler against a fake server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import examples.openai_compatible.app as example
from asyncllm import (
    AsyncRequest,
    ChatResponse,
    ProviderError,
    RetryAfter,
    TerminalError,
)

#: A completion with fields asyncllm's models do not name, at every level.
COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-fake-1",
    "object": "chat.completion",
    "created": 1733300000,
    "model": "ok-model-2026-01-01",
    "system_fingerprint": "fp_fake",
    "service_tier": "default",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Indigo, mostly.",
                "refusal": None,
                "reasoning_content": "The sea reflects the sky...",
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 4,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 9},
    },
    "prompt_logprobs": None,
    "kv_transfer_params": {"seed": 18446744073709551617},
}

#: model name → (status, headers, body) of the fake server's answer.
ANSWERS: dict[str, tuple[int, dict[str, str], dict[str, Any]]] = {
    "ok-model": (200, {}, COMPLETION),
    "busy-model": (
        429,
        {
            "retry-after": "3",
            "x-ratelimit-reset-requests": "156ms",
            "x-ratelimit-reset-tokens": "9.038s",
        },
        {
            "error": {
                "message": "Rate limit reached for busy-model on requests per min.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
    ),
    "small-model": (
        400,
        {},
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
    ),
    "down-model": (503, {}, {"error": {"message": "overloaded", "code": None}}),
}


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers POST /v1/chat/completions according to the requested model."""

    received: list[tuple[str, dict[str, str], dict[str, Any]]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.received.append((self.path, headers, body))
        status, extra_headers, answer = ANSWERS[body["model"]]
        if self.path != "/v1/chat/completions":
            status, extra_headers, answer = 404, {}, {"error": {"message": "no"}}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def fake_openai(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[list[tuple[str, dict[str, str], dict[str, Any]]]]:
    """A fake OpenAI-compatible server; yields what it received."""
    received: list[tuple[str, dict[str, str], dict[str, Any]]] = []
    handler = type("Handler", (FakeOpenAI,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-only")
    monkeypatch.setenv("OPENAI_TIMEOUT_SECONDS", "10")
    monkeypatch.setattr(example, "_client", None)
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def chat_request(model: str, **extra: Any) -> AsyncRequest:
    return AsyncRequest.model_validate(
        {
            "id": "req-openai-1",
            "tenant_id": "acme",
            "request": {
                "model": model,
                "messages": [{"role": "user", "content": "Colour of the sea?"}],
                **extra,
            },
        }
    )


def call_handler(request: AsyncRequest) -> ChatResponse:
    """Run the example's handler once, on a fresh client, and close it."""

    async def call() -> ChatResponse:
        try:
            return await example.chat(request)
        finally:
            await example.client().close()

    return asyncio.run(call())


def test_a_completion_is_returned_with_every_field_the_server_sent(
    fake_openai: list[tuple[str, dict[str, str], dict[str, Any]]],
) -> None:
    request = chat_request("ok-model", top_k=40, temperature=0.2, seed=7)

    answer = call_handler(request)

    assert answer.to_wire() == COMPLETION
    assert answer.content == "Indigo, mostly."
    ((path, headers, sent),) = fake_openai
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-test-only"
    assert sent == request.request.to_wire()  # extras such as top_k included


def test_a_rate_limit_becomes_retry_after_with_the_servers_delay(
    fake_openai: list[tuple[str, dict[str, str], dict[str, Any]]],
) -> None:
    with pytest.raises(RetryAfter) as caught:
        call_handler(chat_request("busy-model"))

    assert caught.value.seconds == 3.0
    assert "rate_limit_exceeded" in caught.value.message
    assert len(fake_openai) == 1  # the client did not retry by itself


def test_a_context_length_error_becomes_a_terminal_error(
    fake_openai: list[tuple[str, dict[str, str], dict[str, Any]]],
) -> None:
    with pytest.raises(TerminalError) as caught:
        call_handler(chat_request("small-model"))

    assert caught.value.code == "context_length_exceeded"
    assert caught.value.status_code == 400
    assert "maximum context length" in caught.value.message


def test_an_overloaded_server_becomes_a_retryable_provider_error(
    fake_openai: list[tuple[str, dict[str, str], dict[str, Any]]],
) -> None:
    with pytest.raises(ProviderError) as caught:
        call_handler(chat_request("down-model"))

    assert caught.value.status_code == 503
    assert len(fake_openai) == 1
