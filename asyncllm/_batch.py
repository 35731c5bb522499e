"""Batch files in OpenAI's Batch API format, pushed through the queues.

Input: one JSON object per line, ``{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body": {...}}``. The whole file is validated before
anything is sent. Each line's request id is derived from the batch id and its
``custom_id``, so a line sent twice (a crash between sending and writing the
manifest) carries the same id and the worker's ledger answers it once.

The manifest is an append-only JSON-lines file: a header, then one line per
request sent. Re-running ``batch submit`` with the same manifest sends only
the lines it does not list yet.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ._errors import InvalidMessage
from ._models import AsyncRequest, AsyncResponse, ChatRequest, now_timestamp
from ._results import ResultStore, Status
from ._wire import describe_validation_error

__all__ = [
    "BatchLine",
    "Manifest",
    "output_lines",
    "parse_batch_file",
]

CHAT_URL = "/v1/chat/completions"
_NAMESPACE = uuid.UUID("6b3f7c2e-1d4a-5e8b-9c0f-2a7d4e6b8c13")


@dataclass(frozen=True)
class BatchLine:
    """One valid line of a batch file."""

    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass
class ParsedBatch:
    """The valid lines of a batch file and the problems of the others."""

    lines: list[BatchLine] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse_batch_file(stream: Iterable[str]) -> ParsedBatch:
    """Validate every line of a batch file.

    Returns:
        The valid lines, and one message per bad line naming its number.
    """
    parsed = ParsedBatch()
    first_seen: dict[str, int] = {}
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            line = _parse_line(number, text)
        except InvalidMessage as exc:
            parsed.problems.append(f"line {number}: {exc.reason}")
            continue
        if line.custom_id in first_seen:
            first = first_seen[line.custom_id]
            parsed.problems.append(
                f"line {number}: duplicate custom_id {line.custom_id!r} "
                f"(first on line {first})"
            )
            continue
        first_seen[line.custom_id] = number
        parsed.lines.append(line)
    return parsed


def _parse_line(number: int, text: str) -> BatchLine:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessage("expected a JSON object")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise InvalidMessage("custom_id must be a non-empty string")
    if data.get("method", "POST") != "POST":
        raise InvalidMessage(f"method {data.get('method')!r} is not POST")
    if data.get("url") != CHAT_URL:
        raise InvalidMessage(f"url {data.get('url')!r} is not {CHAT_URL}")
    body = data.get("body")
    try:
        ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidMessage(f"body: {describe_validation_error(exc)}") from None
    assert isinstance(body, dict)
    return BatchLine(number, custom_id, body)


def request_id_for(batch_id: str, custom_id: str) -> str:
    """Return the request id of a batch line: the same for every resend."""
    return str(uuid.uuid5(_NAMESPACE, f"{batch_id}\n{custom_id}"))


class Manifest:
    """The append-only record of a batch: its header and every line sent.

    Args:
        path: The manifest file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header: dict[str, Any] = {}
        self.sent: dict[int, dict[str, Any]] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        with self.path.open(encoding="utf-8") as stream:
            for number, text in enumerate(stream):
                if not text.strip():
                    continue
                entry = json.loads(text)
                if number == 0:
                    self.header = entry
                else:
                    self.sent[entry["line"]] = entry

    def start(self, input_path: Path, tenant_id: str, total: int) -> None:
        """Write the header of a new manifest (the file must not exist yet)."""
        self.header = {
            "batch_id": f"batch_{uuid.uuid4().hex}",
            "input": str(input_path),
            "tenant_id": tenant_id,
            "created_at": now_timestamp(),
            "lines": total,
        }
        with self.path.open("x", encoding="utf-8") as stream:
            stream.write(json.dumps(self.header) + "\n")

    @property
    def batch_id(self) -> str:
        """The batch's id."""
        return str(self.header["batch_id"])

    @property
    def tenant_id(self) -> str:
        """The tenant the batch was sent for."""
        return str(self.header["tenant_id"])

    def record(self, lines: Iterable[BatchLine]) -> None:
        """Append the lines just sent, flushed to disk before returning."""
        with self.path.open("a", encoding="utf-8") as stream:
            for line in lines:
                entry = {
                    "line": line.line,
                    "custom_id": line.custom_id,
                    "request_id": request_id_for(self.batch_id, line.custom_id),
                }
                self.sent[line.line] = entry
                stream.write(json.dumps(entry) + "\n")
            stream.flush()

    def requests(self, lines: Iterable[BatchLine]) -> list[AsyncRequest]:
        """Build the requests for lines of this batch."""
        return [
            AsyncRequest(
                id=request_id_for(self.batch_id, line.custom_id),
                tenant_id=self.tenant_id,
                request=ChatRequest.model_validate(line.body),
            )
            for line in lines
        ]

    def entries(self) -> list[dict[str, Any]]:
        """Every line sent, in input order."""
        return [self.sent[number] for number in sorted(self.sent)]


def statuses(manifest: Manifest, store: ResultStore) -> dict[Status, int]:
    """Count the manifest's requests per status."""
    counts = dict.fromkeys(Status, 0)
    for entry in manifest.entries():
        counts[store.status(entry["request_id"], manifest.tenant_id)] += 1
    return counts


def output_lines(
    manifest: Manifest, store: ResultStore
) -> Iterator[tuple[bool, dict[str, Any]]]:
    """Yield ``(ok, line)`` per request in input order, in OpenAI's output format.

    Requests not answered yet are yielded as errors with code ``not_answered``.
    """
    for entry in manifest.entries():
        record = store.get(entry["request_id"], manifest.tenant_id)
        response = record.response if record is not None else None
        status = record.status if record is not None else Status.NOT_FOUND
        yield _output_line(entry, response, status)


def _output_line(
    entry: dict[str, Any], response: AsyncResponse | None, status: Status
) -> tuple[bool, dict[str, Any]]:
    line: dict[str, Any] = {
        "id": f"batch_req_{entry['request_id'].replace('-', '')}",
        "custom_id": entry["custom_id"],
        "response": None,
        "error": None,
    }
    if response is None:
        line["error"] = {"code": "not_answered", "message": f"request is {status}"}
        return False, line
    if response.response is not None:
        line["response"] = {
            "status_code": 200,
            "request_id": response.request_id,
            "body": response.response.to_wire(),
        }
        return True, line
    assert response.error is not None
    line["response"] = {
        "status_code": response.error.status_code or 500,
        "request_id": response.request_id,
        "body": {"error": response.error.to_wire()},
    }
    line["error"] = {
        "code": response.error.code or response.error.type,
        "message": response.error.message,
    }
    return False, line
