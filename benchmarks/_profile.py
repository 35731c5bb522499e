"""Reading a py-spy profile (``--format raw``: collapsed stacks with counts)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

#: Where a sample's CPU went, by the innermost frame from a matching file.
#: Checked in order; the first pattern a frame's file matches names it.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("botocore: request signing", r"botocore/(auth|signers)\.py"),
    ("botocore: serialize, validate, parse", r"botocore/(serialize|validate|parsers)"),
    (
        "HTTP: urllib3, http.client, ssl, socket",
        r"(urllib3/|http/client|ssl\.py|socket\.py)",
    ),
    ("botocore/boto3: other", r"(botocore|boto3)/"),
    ("kombu", r"kombu/"),
    ("pydantic", r"pydantic"),
    ("json", r"json/"),
    ("sqlite ledger / result store", r"(_ledger|_results)\.py"),
    ("logging", r"logging/"),
    ("asyncllm", r"asyncllm/"),
    (
        "asyncio, threads, selectors",
        r"(asyncio/|concurrent/|threading\.py|selectors\.py|queue\.py)",
    ),
)

#: Frames that mark a sample as start-up work (imports, connecting, checking
#: the queues), left out so the profile shows the steady state.
STARTUP = re.compile(
    r"importlib\._bootstrap|make_broker|check_queues|load_app|open_ledger"
)

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for part in stack.split(";"):
        match = _FRAME.match(part.strip())
        if match:
            frames.append((match["func"], match["file"]))
    return frames


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    """Summarize a raw py-spy profile: shares by library and by asyncllm function.

    Samples of start-up work are counted apart (``startup_samples``).

    Returns:
        ``samples``, ``categories`` and ``asyncllm`` (name, share) lists, and
        ``leaves``, the functions with the most samples of their own.
    """
    categories: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = startup = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if STARTUP.search(stack):
            startup += count
            continue
        frames = _frames(stack)
        total += count
        categories[_category(frames)] += count
        for name in {f"{file}:{func}" for func, file in frames if _ours(func, file)}:
            inclusive[_short(name)] += count
        if frames:
            func, file = frames[-1]
            leaves[f"{_short(file)}:{func}"] += count
    share = (lambda n: n / total) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "startup_samples": startup,
        "categories": [(k, share(v)) for k, v in categories.most_common()],
        "asyncllm": [(k, share(v)) for k, v in inclusive.most_common(top)],
        "leaves": [(k, share(v)) for k, v in leaves.most_common(top)],
    }


def _ours(func: str, file: str) -> bool:
    """An asyncllm frame below the command line and the worker's outer loop."""
    if "asyncllm/" not in file or file.endswith(("cli.py", "__main__.py")):
        return False
    return func not in ("Worker.run", "Worker.serve")


def _category(frames: list[tuple[str, str]]) -> str:
    for _, file in reversed(frames):
        for name, pattern in CATEGORIES:
            if re.search(pattern, file):
                return name
    return "other (interpreter, startup)"


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path
