"""A handler for any OpenAI-compatible chat-completions endpoint.

Configure it with the environment and run it like any app::

    pip install 'asyncllm[openai]'
    export OPENAI_BASE_URL=https://api.openai.com/v1   # or a vLLM, Ollama, ... URL
    export OPENAI_API_KEY=...
    asyncllm worker -A examples.openai_compatible.app:app --concurrency 100

The request is forwarded unchanged: fields the client library does not name
(vendor extras such as ``top_k``) travel in ``extra_body``. The provider's
answer is returned as the raw JSON it sent, so nothing is dropped. Errors are
classified by `asyncllm.provider_error`: a 429 rate limit becomes
`RetryAfter` (honouring ``retry-after``), 400/401/403/404 and an exhausted
quota become `TerminalError`, and 5xx are retried with backoff.
"""

from __future__ import annotations

import json
import os
from typing import Any

import openai

from asyncllm import AsyncLLM, AsyncRequest, ChatResponse, provider_error

app = AsyncLLM("openai-compatible")

_client: openai.AsyncOpenAI | None = None


def client() -> openai.AsyncOpenAI:
    """One client per worker process; its connection pool is shared by all calls."""
    global _client
    if _client is None:
        _client = openai.AsyncOpenAI(
            base_url=os.environ.get("OPENAI_BASE_URL"),
            api_key=os.environ.get("OPENAI_API_KEY", "not-needed-for-local-servers"),
            max_retries=0,  # the queue retries; the handler should not hold the slot
            timeout=float(os.environ.get("OPENAI_TIMEOUT_SECONDS", "600")),
        )
    return _client


@app.handler(default=True, timeout_seconds=900)
async def chat(request: AsyncRequest) -> ChatResponse:
    """Forward the chat request and return the provider's completion as it came."""
    body = request.request.to_wire()
    model, messages = body.pop("model"), body.pop("messages")
    try:
        raw = await client().chat.completions.with_raw_response.create(
            model=model, messages=messages, extra_body=body
        )
    except openai.APIStatusError as exc:
        raise provider_error(
            exc.status_code, _error_body(exc), dict(exc.response.headers)
        ) from exc
    return ChatResponse.model_validate(json.loads(raw.http_response.text))


def _error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    try:
        parsed = json.loads(exc.response.text)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
