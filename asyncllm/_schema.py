"""JSON Schemas of the two queue messages, for producers in other languages."""

from __future__ import annotations

from typing import Any

from ._models import AsyncRequest, AsyncResponse

__all__ = ["message_schema"]


def message_schema(which: str) -> dict[str, Any]:
    """Return the JSON Schema of ``"request"`` or ``"response"`` messages.

    The schemas describe the snake_case field names. Unknown fields are allowed
    everywhere, so newer and vendor-specific fields pass through.
    """
    model = AsyncRequest if which == "request" else AsyncResponse
    schema = model.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://asyncllm.invalid/schemas/async-{which}.schema.json"
    return schema
