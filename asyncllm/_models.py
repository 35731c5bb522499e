"""Message models: the chat payloads and the two queue envelopes.

Every model here is lossless on the wire: fields it does not name are kept
(``extra="allow"``), values are validated strictly so that nothing is coerced
(``1`` stays an int, ``"00042"`` stays a string, integers keep full precision),
and a field that was absent stays absent on output while an explicit ``null``
stays ``null``. Serialize with `to_wire` to get that behaviour.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

__all__ = [
    "AsyncRequest",
    "AsyncResponse",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "Choice",
    "ErrorInfo",
    "Function",
    "FunctionCall",
    "ResponseFormat",
    "Timestamp",
    "Tool",
    "ToolCall",
    "Usage",
    "now_timestamp",
    "parse_timestamp",
]

Number = StrictInt | StrictFloat
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def _check_timestamp(value: object) -> object:
    if isinstance(value, datetime):
        return _format_datetime(value)
    if value == _GO_ZERO_TIME:
        return None
    if isinstance(value, str) and not _RFC3339.match(value):
        message = f"{value!r} is not an RFC 3339 timestamp (2026-12-04T10:15:30Z)"
        raise ValueError(message)
    return value


#: An RFC 3339 timestamp kept as text, so nanosecond precision from other
#: producers survives. Go's zero time ``0001-01-01T00:00:00Z`` reads as unset.
Timestamp = Annotated[StrictStr | None, BeforeValidator(_check_timestamp)]


def _format_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    text = value.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def now_timestamp() -> str:
    """Return the current UTC time as an RFC 3339 timestamp."""
    return _format_datetime(datetime.now(timezone.utc))


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware datetime.

    Fractions beyond microseconds are cut, since `datetime` holds no more.

    Args:
        value: A timestamp such as ``2026-12-04T10:15:30.123456789Z``.

    Returns:
        The moment as a timezone-aware `datetime`.
    """
    head, zone = value[:19], value[19:]
    fraction = ""
    if zone.startswith("."):
        digits = re.match(r"\.(\d+)", zone)
        assert digits is not None
        fraction = "." + digits.group(1)[:6]
        zone = zone[digits.end() :]
    zone = "+00:00" if zone in ("Z", "z") else zone
    return datetime.fromisoformat(head.replace(" ", "T") + fraction + zone)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-ready dict: unknown fields kept, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class FunctionCall(_Wire):
    """The function a tool call names, with its arguments as opaque JSON text."""

    name: StrictStr
    arguments: StrictStr


class ToolCall(_Wire):
    """One tool call made by the assistant."""

    id: StrictStr
    type: StrictStr = "function"
    function: FunctionCall | None = None


class ChatMessage(_Wire):
    """One message of a conversation.

    ``content`` is a string, a list of content parts (kept as given, including
    part types this model does not know), or ``None``.
    """

    role: Role
    content: StrictStr | list[Any] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: StrictStr | None = None
    refusal: StrictStr | None = None

    @model_validator(mode="after")
    def _tool_message_names_its_call(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs the 'tool_call_id' it answers")
        return self


class Function(_Wire):
    """A function definition offered to the model."""

    name: StrictStr
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(_Wire):
    """A tool offered to the model."""

    type: StrictStr
    function: Function | None = None


class ResponseFormat(_Wire):
    """How the model must format its answer (text, json_object, json_schema)."""

    type: StrictStr
    json_schema: dict[str, Any] | None = None


class ChatRequest(_Wire):
    """An OpenAI-style chat-completions request.

    ``model`` and a non-empty ``messages`` list are required. Every other field,
    named here or not (vendor extras such as ``top_k``), is carried unchanged.
    Streaming cannot travel over a queue, so ``stream: true`` is refused: the
    worker returns one ``chat.completion``.
    """

    model: StrictStr = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: Number | None = None
    top_p: Number | None = None
    n: StrictInt | None = None
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool | None = None
    tools: list[Tool] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    logit_bias: dict[str, Number] | None = None
    metadata: dict[str, StrictStr] | None = None
    user: StrictStr | None = None

    @field_validator("stream")
    @classmethod
    def _no_streaming(cls, value: bool | None) -> bool | None:
        if value:
            message = (
                "streaming is not supported over the queue; leave 'stream' unset "
                "and the worker returns one chat.completion"
            )
            raise ValueError(message)
        return value

    @model_validator(mode="after")
    def _tool_results_match_calls(self) -> ChatRequest:
        call_ids: set[str] = set()
        for index, message in enumerate(self.messages):
            for call in message.tool_calls or ():
                call_ids.add(call.id)
            if message.role == "tool" and message.tool_call_id not in call_ids:
                reason = (
                    f"messages[{index}].tool_call_id {message.tool_call_id!r} "
                    "matches no earlier assistant tool call"
                )
                raise ValueError(reason)
        return self


class Usage(_Wire):
    """Token counts of one completion (details are kept as given)."""

    prompt_tokens: StrictInt | None = None
    completion_tokens: StrictInt | None = None
    total_tokens: StrictInt | None = None


class Choice(_Wire):
    """One alternative answer of a completion."""

    index: StrictInt = 0
    message: ChatMessage
    finish_reason: StrictStr | None = None
    logprobs: Any = None


class ChatResponse(_Wire):
    """An OpenAI-style ``chat.completion`` answer.

    Only ``choices`` is required. A ``finish_reason`` of ``null`` (as some local
    servers send) is accepted, and every choice is kept in ``index`` order.
    """

    id: StrictStr | None = None
    object: StrictStr | None = None
    created: StrictInt | None = None
    model: StrictStr | None = None
    choices: list[Choice]
    usage: Usage | None = None

    @property
    def content(self) -> str | None:
        """The text of the first choice, or None when it has none."""
        first = self.choices[0].message.content if self.choices else None
        return first if isinstance(first, str) else None

    @property
    def refusal(self) -> str | None:
        """The refusal of the first choice, when the model declined to answer."""
        return self.choices[0].message.refusal if self.choices else None

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        model: str,
        usage: dict[str, int] | None = None,
        finish_reason: str = "stop",
    ) -> ChatResponse:
        """Build a one-choice completion around a text answer.

        Args:
            text: The assistant's answer.
            model: The model name to report.
            usage: Token counts, if known. Defaults to none.
            finish_reason: Why generation stopped. Defaults to ``"stop"``.

        Returns:
            A `ChatResponse` shaped like an OpenAI ``chat.completion``.
        """
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(datetime.now(timezone.utc).timestamp()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
        }
        if usage is not None:
            body["usage"] = usage
        return cls.model_validate(body)


class ErrorInfo(_Wire):
    """What went wrong with a request, safe to show its caller.

    Attributes:
        type: A short class of error, for example ``"TerminalError"``.
        message: A human-readable explanation, never containing prompt text.
        code: A machine-readable code, when one is known.
        status_code: The provider's HTTP status, when the error came from one.
        retryable: Whether the worker treated the error as retryable.
    """

    type: StrictStr
    message: StrictStr
    code: StrictStr | None = None
    status_code: StrictInt | None = None
    retryable: StrictBool | None = None


def _new_id() -> str:
    return str(uuid.uuid4())


def _non_empty(value: str, field: str) -> str:
    if not value.strip():
        raise ValueError(f"'{field}' must not be empty")
    return value


class AsyncRequest(_Wire):
    """A chat request on its way through the request queue.

    Attributes:
        id: The request id, a fresh UUID unless given.
        tenant_id: Who the request belongs to; lookups are scoped by it.
        request: The chat-completions request for the handler.
        provider: Which provider or route the handler should use, if any.
        callback: A URL to notify when the request completes, if any.
        created_at: When the request was made (RFC 3339 text).
        handler: The name of the handler to run; None runs the app's default.
    """

    id: StrictStr = Field(default_factory=_new_id, min_length=1, max_length=256)
    tenant_id: StrictStr = Field(min_length=1, max_length=256)
    request: ChatRequest
    provider: StrictStr | None = None
    callback: StrictStr | None = None
    created_at: Timestamp = Field(default_factory=now_timestamp)
    handler: StrictStr | None = None

    @field_validator("tenant_id")
    @classmethod
    def _tenant_is_not_blank(cls, value: str) -> str:
        return _non_empty(value, "tenant_id")

    @field_validator("callback")
    @classmethod
    def _callback_is_a_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            message = f"callback {value!r} is not an http(s) URL"
            raise ValueError(message)
        return value

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-ready dict, always with id and created_at."""
        body = super().to_wire()
        body["id"] = self.id
        body.setdefault("created_at", self.created_at)
        return body


class AsyncResponse(_Wire):
    """The answer to one `AsyncRequest`, published to the response queue.

    Exactly one of ``response`` and ``error`` is set.

    Attributes:
        request_id: The id of the request this answers.
        tenant_id: The tenant of that request.
        response: The handler's completion, when it succeeded.
        error: What went wrong, when it failed.
        created_at: When the answer was made (RFC 3339 text).
        attempts: How many times the request was tried, this one included.
    """

    request_id: StrictStr = Field(min_length=1)
    tenant_id: StrictStr = Field(min_length=1)
    response: ChatResponse | None = None
    error: ErrorInfo | None = None
    created_at: Timestamp = Field(default_factory=now_timestamp)
    attempts: StrictInt = 1

    @model_validator(mode="after")
    def _one_outcome(self) -> AsyncResponse:
        if (self.response is None) == (self.error is None):
            raise ValueError("exactly one of 'response' and 'error' must be set")
        return self

    @property
    def ok(self) -> bool:
        """True when the request succeeded."""
        return self.error is None

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-ready dict, always with the outcome and created_at."""
        body = super().to_wire()
        body.setdefault("created_at", self.created_at)
        body.setdefault("attempts", self.attempts)
        body["response"] = self.response.to_wire() if self.response else None
        body["error"] = self.error.to_wire() if self.error else None
        return body
