"""The wire-shape test corpus: request, response and foreign bodies on disk.

Cases come from ``tests/data`` and, when it exists, from ``../shared/cases``
next to the project root; the suite passes with either alone. Each request is
sorted by what asyncllm must do with it: carry it unchanged, refuse it naming
the field, or refuse it at submit because it is larger than a queue allows.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

DATA_DIR = Path(__file__).resolve().parent / "data"
SHARED_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "cases"

#: SQS's hard limit on one message, body and attributes together.
SQS_LIMIT = 1_048_576

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Case:
    """One file of the corpus."""

    source: str
    path: Path

    @property
    def id(self) -> str:
        """A short test id: where the file comes from and its name."""
        return f"{self.source}:{self.path.stem}"

    @cached_property
    def text(self) -> str:
        """The file's text, exactly as stored."""
        return self.path.read_text(encoding="utf-8")

    @cached_property
    def data(self) -> Any:
        """The file's JSON value."""
        return json.loads(self.text)


def _folders(kind: str) -> list[tuple[str, Path]]:
    roots = [("data", DATA_DIR), ("shared", SHARED_DIR)]
    return [(source, root / kind) for source, root in roots if (root / kind).is_dir()]


def cases(kind: str, pattern: str = "*.json") -> list[Case]:
    """Return every file of one kind (``requests``, ``responses``, ``foreign``)."""
    found = []
    for source, folder in _folders(kind):
        found += [Case(source, path) for path in sorted(folder.glob(pattern))]
    return found


def foreign_case(prefix: str) -> Case | None:
    """Return the first foreign body whose name starts with ``prefix``."""
    matches = [case for case in cases("foreign", "*") if case.path.name[:3] == prefix]
    return matches[0] if matches else None


def foreign_attributes(case: Case) -> dict[str, Any]:
    """Return the SQS message attributes recorded for a foreign body."""
    listing = case.path.parent / "attributes.json"
    if not listing.is_file():
        return {}
    for entry in json.loads(listing.read_text(encoding="utf-8")):
        if entry.get("file") == case.path.name:
            return dict(entry.get("MessageAttributes", {}))
    return {}


def request_problem(data: Any) -> str | None:
    """Return the field an invalid request must be refused for, or None if valid.

    This is the test's own reading of the rules, independent of the models:
    a model and at least one message are required, roles are OpenAI's, a tool
    message answers an earlier call, ``stream: true`` cannot cross a queue and
    text must be Unicode (no lone surrogates).
    """
    if not isinstance(data, dict):
        return "body"
    if _has_lone_surrogate(data):
        return "lone surrogate at request."
    if not isinstance(data.get("model"), str):
        return "request.model"
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return "request.messages"
    if data.get("stream") is True:
        return "request.stream"
    return _message_problem(messages)


def _message_problem(messages: list[Any]) -> str | None:
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        if message.get("role") not in _ROLES:
            return f"request.messages[{index}].role"
        for call in message.get("tool_calls") or ():
            arguments = call.get("function", {}).get("arguments")
            if not isinstance(arguments, str):
                return f"request.messages[{index}].tool_calls"
            call_ids.add(call.get("id"))
        if message["role"] == "tool" and message.get("tool_call_id") not in call_ids:
            return f"messages[{index}]"
    return None


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_LONE_SURROGATE.search(value))
    if isinstance(value, dict):
        return any(
            _has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


def compact_size(data: Any) -> int:
    """Return the size in bytes of a value as compact UTF-8 JSON."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8", "surrogatepass"))


def _is_invalid(case: Case) -> bool:
    return "invalid" in case.path.stem or request_problem(case.data) is not None


def valid_requests(max_bytes: int = SQS_LIMIT - 4096) -> list[Any]:
    """Valid requests that fit in one SQS message, as pytest params."""
    return [
        pytest.param(case, id=case.id)
        for case in cases("requests")
        if not _is_invalid(case) and compact_size(case.data) <= max_bytes
    ]


@dataclass(frozen=True)
class BuiltCase:
    """A case made by code rather than read from a file."""

    name: str
    data: Any

    @property
    def id(self) -> str:
        """A short test id: ``built:`` and the case's name."""
        return f"built:{self.name}"


def oversized_requests() -> list[Any]:
    """Valid requests too large for any SQS queue, as pytest params.

    One is always built (a long-context request just over 1.1 MiB), so the
    list is never empty when only ``tests/data`` is present.
    """
    built = BuiltCase("long-context-1150kb", long_context_request(1_150_000)[0])
    on_disk = [
        pytest.param(case, id=case.id)
        for case in cases("requests")
        if not _is_invalid(case) and compact_size(case.data) > SQS_LIMIT
    ]
    return [pytest.param(built, id=built.id), *on_disk]


def invalid_requests() -> list[Any]:
    """Requests asyncllm must refuse, as pytest params."""
    return [
        pytest.param(case, id=case.id)
        for case in cases("requests")
        if _is_invalid(case)
    ]


def completions() -> list[Any]:
    """Completion bodies (``chat.completion`` objects), as pytest params."""
    return [
        pytest.param(case, id=case.id)
        for case in cases("responses")
        if isinstance(case.data, dict) and "choices" in case.data
    ]


def json_difference(actual: Any, expected: Any, where: str = "$") -> str | None:
    """Describe the first difference between two JSON values, or None if equal.

    Stricter than ``==``: an int is not a float (``1`` vs ``1.0``), a bool is
    not an int, and a null is not an absent key. Key order does not matter.
    """
    if type(actual) is not type(expected):
        kinds = f"{type(actual).__name__} vs {type(expected).__name__}"
        return f"{where}: {kinds}: {actual!r:.60} vs {expected!r:.60}"
    if isinstance(expected, dict):
        return _dict_difference(actual, expected, where)
    if isinstance(expected, list):
        if len(actual) != len(expected):
            return f"{where}: {len(actual)} items vs {len(expected)}"
        for index, (left, right) in enumerate(zip(actual, expected, strict=True)):
            found = json_difference(left, right, f"{where}[{index}]")
            if found:
                return found
        return None
    if actual != expected:
        return f"{where}: {actual!r:.80} != {expected!r:.80}"
    return None


def _dict_difference(
    actual: dict[str, Any], expected: dict[str, Any], where: str
) -> str | None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing or extra:
        return f"{where}: missing keys {missing}, extra keys {extra}"
    for key, value in expected.items():
        found = json_difference(actual[key], value, f"{where}.{key}")
        if found:
            return found
    return None


def long_context_request(target_bytes: int) -> tuple[dict[str, Any], str]:
    """Build a chat request whose document is about ``target_bytes`` of UTF-8.

    Uses the corpus generator ``tests/data/long_context.py`` when it offers
    ``build_document(target_bytes, seed)`` and ``build_request(document,
    label)``, and a generator of this module otherwise. Returns the request
    and the document; the request's metadata carries the document's sha256 so
    that the receiver can prove it arrived whole.
    """
    generator = _corpus_generator()
    if generator is not None:
        document = generator.build_document(target_bytes - 1_000, target_bytes)
        chat = generator.build_request(document, f"long-{target_bytes}")
        return chat, document
    document = _long_document(target_bytes)
    return _long_request(document), document


def _corpus_generator() -> Any:
    path = DATA_DIR / "long_context.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("corpus_long_context", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wanted = ("build_document", "build_request")
    return module if all(hasattr(module, name) for name in wanted) else None


def _long_document(target_bytes: int) -> str:
    lines = []
    size = 0
    while size < target_bytes:
        number = len(lines) + 1
        line = f"[{number:06d}] Ōamaru depot — pallet jack #{number % 997} checked; ✓"
        lines.append(line)
        size += len(line.encode("utf-8")) + 1
    lines.append(f"END-OF-LOG after {len(lines)} entries.")
    return "\n".join(lines)


def _long_request(document: str) -> dict[str, Any]:
    raw = document.encode("utf-8")
    return {
        "model": "long-context-model",
        "messages": [
            {"role": "system", "content": "You audit depot logs."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "The log:\n\n" + document},
                    {"type": "text", "text": "Which entry is last?"},
                ],
            },
        ],
        "metadata": {
            "doc_sha256": hashlib.sha256(raw).hexdigest(),
            "doc_bytes": str(len(raw)),
        },
    }
