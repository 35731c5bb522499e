"""The wire format: plain JSON bodies with ``TenantID`` and ``RequestID`` attributes.

A body is the message's own JSON, UTF-8, with no framework envelope and no
base64, so any language can produce or read it. Decoding is strict: a body is
one JSON object and nothing else, with no guessing at encodings or key names.
Two field-name schemas are accepted, each through an explicit mapping: ours
(``id``, ``tenant_id``, ...) and the one a Go gateway writes for a struct
without JSON tags (``ID``, ``TenantID``, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ._errors import InvalidMessage, PayloadTooLarge
from ._models import AsyncRequest, AsyncResponse

__all__ = [
    "ATTR_FAILED_ATTEMPTS",
    "ATTR_RATE_LIMITS",
    "ATTR_REASON",
    "ATTR_REQUEST_ID",
    "ATTR_TENANT_ID",
    "SQS_MAX_MESSAGE_BYTES",
    "attribute_values",
    "decode_request",
    "decode_response",
    "encode",
    "encoded_size",
    "make_attributes",
    "peek_identity",
]

#: SQS's hard limit on one message, body and attributes together.
SQS_MAX_MESSAGE_BYTES = 1_048_576

ATTR_TENANT_ID = "TenantID"
ATTR_REQUEST_ID = "RequestID"
#: Set on a message that asyncllm moved to a dead-letter queue itself.
ATTR_REASON = "AsyncLLMDeadLetterReason"
#: Failed attempts of earlier copies, on a copy re-queued after a rate limit.
ATTR_FAILED_ATTEMPTS = "AsyncLLMFailedAttempts"
#: How often the request was re-queued after a rate limit.
ATTR_RATE_LIMITS = "AsyncLLMRateLimits"

# Characters SQS refuses in a body; JSON escapes all other control characters.
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html
_SQS_ILLEGAL = re.compile("[\ufffe\uffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")

_REQUEST_GO_NAMES = {
    "ID": "id",
    "TenantID": "tenant_id",
    "Request": "request",
    "Provider": "provider",
    "Callback": "callback",
    "CreatedAt": "created_at",
    "Handler": "handler",
}
_RESPONSE_GO_NAMES = {
    "RequestID": "request_id",
    "TenantID": "tenant_id",
    "Response": "response",
    "Error": "error",
    "CreatedAt": "created_at",
    "Attempts": "attempts",
}
# Keys that tell which of the two schemas a body uses.
_NATIVE_KEYS = frozenset({"id", "tenant_id", "request", "request_id", "response"})
_GO_KEYS = frozenset({"ID", "TenantID", "Request", "RequestID", "Response"})
# Go writes "" for an unset string field of a struct without omitempty.
_GO_EMPTY_IS_UNSET = {"provider", "callback", "handler"}

ModelT = TypeVar("ModelT", bound=BaseModel)


def encode(message: AsyncRequest | AsyncResponse) -> str:
    """Serialize a message to its SQS body.

    Args:
        message: The request or response to send.

    Returns:
        Compact JSON text that SQS accepts as a message body.

    Raises:
        InvalidMessage: A string holds a lone surrogate, which is not Unicode,
            or objects and arrays nest deeper than `MAX_NESTING`.
    """
    body = message.to_wire()
    depth = nesting_depth(body)
    if depth > MAX_NESTING:
        raise InvalidMessage(_too_deep(depth))
    _reject_lone_surrogates(body, "")
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return _SQS_ILLEGAL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def encoded_size(body: str, attributes: Mapping[str, Mapping[str, str]]) -> int:
    """Return the size SQS counts for a message: body plus attributes, in bytes."""
    size = len(body.encode("utf-8"))
    for name, attribute in attributes.items():
        size += len(name.encode()) + len(attribute["DataType"].encode())
        size += len(attribute.get("StringValue", "").encode())
    return size


def check_size(
    body: str, attributes: Mapping[str, Mapping[str, str]], limit: int
) -> None:
    """Raise `PayloadTooLarge` when a message would exceed ``limit`` bytes."""
    size = encoded_size(body, attributes)
    if size > limit:
        raise PayloadTooLarge(size, limit)


def make_attributes(tenant_id: str, request_id: str) -> dict[str, dict[str, str]]:
    """Return the SQS message attributes every asyncllm message carries."""
    return {
        ATTR_TENANT_ID: {"DataType": "String", "StringValue": tenant_id},
        ATTR_REQUEST_ID: {"DataType": "String", "StringValue": request_id},
    }


def attribute_values(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Flatten SQS message attributes to their string values.

    ``String`` and ``Number`` attributes, including custom labels such as
    ``String.uuid``, are read by their base type; a ``Number`` keeps its exact
    digits. Binary attributes are left out.
    """
    values: dict[str, str] = {}
    for name, attribute in attributes.items():
        base_type = str(attribute.get("DataType", "")).split(".", 1)[0]
        if base_type in ("String", "Number") and "StringValue" in attribute:
            values[name] = str(attribute["StringValue"])
    return values


def count_value(value: str | None) -> int:
    """Read a count attribute (such as ``AsyncLLMFailedAttempts``) leniently.

    A missing, malformed or negative value counts as 0: a count written by
    another producer must not stop a message from being processed.
    """
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0


def decode_request(
    body: str | bytes, attributes: Mapping[str, str] | None = None
) -> AsyncRequest:
    """Parse a request body received from the queue.

    Args:
        body: The raw message body.
        attributes: The message's attribute values (see `attribute_values`),
            checked against the body when present.

    Returns:
        The validated request.

    Raises:
        InvalidMessage: The body is not a request; ``reason`` says why.
    """
    data = load_object(body)
    fields = _map_schema(data, _REQUEST_GO_NAMES)
    if "id" not in fields:
        raise InvalidMessage("id: Field required (a queued request must carry its id)")
    request = _validate(AsyncRequest, fields)
    _check_attributes(attributes or {}, request.tenant_id, request.id)
    return request


def decode_response(body: str | bytes) -> AsyncResponse:
    """Parse a response body received from the response queue.

    Raises:
        InvalidMessage: The body is not a response; ``reason`` says why.
    """
    data = load_object(body)
    fields = _map_schema(data, _RESPONSE_GO_NAMES)
    return _validate(AsyncResponse, fields)


def peek_identity(body: str | bytes) -> tuple[str | None, str | None]:
    """Return ``(request_id, tenant_id)`` from a body that failed to decode.

    Used to address an error response for a message that cannot be processed;
    returns None for anything that cannot be read plainly.
    """
    try:
        data = load_object(body, check_unicode=False)
    except InvalidMessage:
        return None, None
    request_id = data.get("id", data.get("ID"))
    tenant_id = data.get("tenant_id", data.get("TenantID"))
    return (
        request_id if isinstance(request_id, str) and request_id else None,
        tenant_id if isinstance(tenant_id, str) and tenant_id else None,
    )


def load_object(body: str | bytes, check_unicode: bool = True) -> dict[str, Any]:
    """Parse a body that must be one JSON object, by the queue's rules.

    Refused, each with a reason: text that is not UTF-8 or not JSON, ``NaN``
    and ``Infinity``, a key given twice in one object, nesting deeper than
    `MAX_NESTING`, anything but an object, and (with ``check_unicode``) lone
    surrogates.

    Raises:
        InvalidMessage: The body breaks one of the rules; ``reason`` says how.
    """
    text = _as_text(body)
    try:
        data = json.loads(
            text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys
        )
    except json.JSONDecodeError as exc:
        raise InvalidMessage(f"body is not JSON: {exc}") from None
    except _DuplicateKey as exc:
        raise InvalidMessage(f"body is ambiguous: {exc}") from None
    except ValueError as exc:
        raise InvalidMessage(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidMessage(_too_deep(None)) from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise InvalidMessage(f"body is JSON {kind}, expected an object")
    depth = nesting_depth(data)
    if depth > MAX_NESTING:
        raise InvalidMessage(_too_deep(depth))
    if check_unicode:
        _reject_lone_surrogates(data, "")
    return data


#: The deepest nesting of objects and arrays a body may have. Real requests,
#: tool schemas included, stay far below it; deeper bodies would exhaust
#: Python's recursion limit in validation and encoding.
MAX_NESTING = 100


def nesting_depth(value: Any) -> int:
    """Return how deeply objects and arrays nest in a JSON value (a scalar is 0).

    Iterative, so that it works at any depth.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _too_deep(depth: int | None) -> str:
    measured = f"{depth} levels deep" if depth is not None else "too deeply to parse"
    return (
        f"body nests objects and arrays {measured}; at most {MAX_NESTING} "
        "are accepted: flatten the request"
    )


def _as_text(body: str | bytes) -> str:
    if isinstance(body, str):
        return body
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"body is not UTF-8 text: {exc.reason}") from None


class _DuplicateKey(ValueError):
    """A JSON object names one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, refusing a key given twice.

    Parsers disagree on which of two equal keys wins; a body that names two
    tenants must not be read one way by its producer and another way here.
    """
    data = dict(pairs)
    if len(data) != len(pairs):
        keys = [key for key, _ in pairs]
        twice = next(key for key in keys if keys.count(key) > 1)
        raise _DuplicateKey(f"the key {twice!r} appears twice in one object")
    return data


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _map_schema(data: dict[str, Any], go_names: Mapping[str, str]) -> dict[str, Any]:
    has_native = not _NATIVE_KEYS.isdisjoint(data)
    has_go = not _GO_KEYS.isdisjoint(data)
    if has_native and has_go:
        raise InvalidMessage("ambiguous envelope schema: both snake_case and Go keys")
    if has_native:
        return data
    if not has_go:
        keys = ", ".join(sorted(data)[:8]) or "none"
        raise InvalidMessage(f"unknown envelope schema (keys: {keys})")
    return _from_go(data, go_names)


def _from_go(data: dict[str, Any], go_names: Mapping[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in data.items():
        name = go_names.get(key)
        if name is None:
            fields[key] = value
        elif not (name in _GO_EMPTY_IS_UNSET and value == ""):
            fields[name] = value
    return fields


def _validate(model: type[ModelT], fields: dict[str, Any]) -> ModelT:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise InvalidMessage(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """Turn a pydantic error into one line naming each bad field and the problem."""
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        where = _format_location(error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _format_location(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _is_union_branch(part):
            text += f".{part}" if text else part
    return text


def _is_union_branch(part: str) -> bool:
    # pydantic names the tried branch of a union ("str", "list[any]", ...).
    return part in ("str", "int", "float", "bool", "none") or "[" in part


def _check_attributes(attributes: Mapping[str, str], tenant_id: str, rid: str) -> None:
    tenant_attribute = attributes.get(ATTR_TENANT_ID)
    if tenant_attribute is not None and tenant_attribute != tenant_id:
        message = (
            f"TenantID attribute {tenant_attribute!r} disagrees with body "
            f"tenant_id {tenant_id!r}"
        )
        raise InvalidMessage(message)
    id_attribute = attributes.get(ATTR_REQUEST_ID)
    if id_attribute is not None and id_attribute != rid:
        message = f"RequestID attribute {id_attribute!r} disagrees with body id {rid!r}"
        raise InvalidMessage(message)


def _reject_lone_surrogates(value: Any, path: str) -> None:
    for where, text in _strings(value, path):
        if _SURROGATE.search(text):
            raise InvalidMessage(f"lone surrogate at {where or 'body'}: not Unicode")


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key, path)
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
