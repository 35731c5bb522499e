"""The gateway's request and response bodies, as documented in its OpenAPI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .._models import AsyncResponse, ChatRequest

__all__ = [
    "Accepted",
    "AsyncChatRequest",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "Pending",
    "Result",
    "chat_request_schema",
]


class AsyncChatRequest(ChatRequest):
    """An OpenAI chat-completions request, plus where to route and notify.

    Every field of the chat request, known here or not, is forwarded
    unchanged to the handler; ``provider`` and ``callback`` are taken out.
    """

    provider: str | None = Field(
        default=None, description="A provider or route for the handler."
    )
    callback: str | None = Field(
        default=None,
        description="An https URL that receives the signed AsyncResponse.",
    )


class Accepted(BaseModel):
    """The answer to a submitted request."""

    request_id: str
    status: Literal["queued"]
    status_url: str = Field(description="Where to GET the result, on this gateway.")


class Pending(BaseModel):
    """A request that is not answered yet."""

    request_id: str
    status: Literal["queued"]


class Result(AsyncResponse):
    """The `AsyncResponse` of an answered request, with its status."""

    status: Literal["completed", "failed"]


class ErrorDetail(BaseModel):
    """What was wrong with a call."""

    type: str = Field(description="A short class, e.g. 'invalid_request'.")
    message: str
    param: str | None = Field(default=None, description="The offending field.")


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorDetail


class Health(BaseModel):
    """A health or readiness answer."""

    status: Literal["ok", "unavailable"]
    reason: str | None = None


def chat_request_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the JSON Schema of the POST body and its definitions.

    Returns:
        The body's schema and the schemas it refers to, keyed by name, with
        references in OpenAPI's ``#/components/schemas/`` form.
    """
    schema = AsyncChatRequest.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    definitions = schema.pop("$defs", {})
    return schema, definitions
