"""asyncllm's side: two apps, a no-op handler and one that calls the provider.

Run as ``asyncllm worker -A benchmarks.apps.asyncllm_app:noop_app`` (or
``:llm_app``); queues, endpoint and stores come from the ``ASYNCLLM_*``
variables the runner sets. The LLM handler is written the way the README
suggests: an ``async def`` handler and one shared HTTP client per process.
"""

from __future__ import annotations

import httpx

from asyncllm import AsyncLLM, AsyncRequest, ChatResponse
from benchmarks.apps import common

noop_app = AsyncLLM("bench-noop")
llm_app = AsyncLLM("bench-llm")

_client: httpx.AsyncClient | None = None


@noop_app.handler
async def noop(request: AsyncRequest) -> ChatResponse:
    """Answer at once, without any I/O."""
    return ChatResponse.from_text("Hello.", model=request.request.model)


def client() -> httpx.AsyncClient:
    """One client per worker process, its pool as large as the concurrency."""
    global _client
    if _client is None:
        size = common.concurrency()
        _client = httpx.AsyncClient(
            base_url=common.provider_url(),
            timeout=60.0,
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
        )
    return _client


@llm_app.handler(timeout_seconds=60)
async def chat(request: AsyncRequest) -> ChatResponse:
    """Forward the chat request to the provider and return its completion."""
    reply = await client().post("/v1/chat/completions", json=request.request.to_wire())
    reply.raise_for_status()
    return ChatResponse.model_validate(reply.json())
