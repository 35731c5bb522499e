"""A deterministic offline handler: no network, no model, the same answer every time.

It is the demo's handler and a template for your own. Run it with::

    asyncllm worker -A examples.offline.app:app
"""

from __future__ import annotations

import asyncio
from typing import Any

from asyncllm import AsyncLLM, AsyncRequest, ChatResponse

app = AsyncLLM("offline-demo")


def _text_of(content: Any) -> str:
    """Return the text of a message's content, joining text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return " ".join(part for part in parts if part)
    return ""


@app.handler(default=True, timeout_seconds=30)
async def offline_echo(request: AsyncRequest) -> ChatResponse:
    """Answer with a summary of the last user message, after a short pause."""
    await asyncio.sleep(0.05)
    users = [m for m in request.request.messages if m.role == "user"]
    text = _text_of(users[-1].content) if users else ""
    words = text.split()
    answer = f"Received {len(words)} words from {request.tenant_id}"
    if words:
        answer += f"; first: {words[0]!r}, last: {words[-1]!r}"
    prompt_tokens = sum(
        len(_text_of(m.content).split()) for m in request.request.messages
    )
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(answer.split()),
        "total_tokens": prompt_tokens + len(answer.split()),
    }
    return ChatResponse.from_text(answer, model=request.request.model, usage=usage)


@app.handler(name="shout")
def shout(request: AsyncRequest) -> dict[str, Any]:
    """A plain (thread-pool) handler that returns a dict instead of a model."""
    text = _text_of(request.request.messages[-1].content)
    return {
        "object": "chat.completion",
        "model": request.request.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text.upper()},
                "finish_reason": "stop",
            }
        ],
    }
