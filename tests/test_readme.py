"""The README's Python snippets run as written."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import running_worker, test_queue_options

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def block_containing(marker: str) -> str:
    matches = [block for block in python_blocks() if marker in block]
    assert len(matches) == 1, f"expected one README block with {marker!r}"
    return matches[0]


def test_the_quickstart_handler_answers_the_quickstart_submit(
    app_settings: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "myapp.py").write_text(block_containing("# myapp.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ASYNCLLM_SQS_ENDPOINT_URL", app_settings["endpoint_url"])
    monkeypatch.setenv("ASYNCLLM_REQUEST_QUEUE", app_settings["request_queue"])
    monkeypatch.setenv("ASYNCLLM_RESPONSE_QUEUE", app_settings["response_queue"])
    monkeypatch.setenv("ASYNCLLM_RESULT_STORE", app_settings["result_store"])
    monkeypatch.setenv("ASYNCLLM_LEDGER", app_settings["ledger"])
    monkeypatch.setenv("ASYNCLLM_WAIT_TIME_SECONDS", "1")
    sys.modules.pop("myapp", None)
    import myapp  # type: ignore[import-not-found]

    myapp.app.create_queues(test_queue_options())
    printed = io.StringIO()
    with running_worker(myapp.app), contextlib.redirect_stdout(printed):
        exec(block_containing("from myapp import app"), {})

    request_id, answer = printed.getvalue().splitlines()
    assert len(request_id) == 36
    assert answer == "You asked: Hi"
    myapp.app.close()
    sys.modules.pop("myapp", None)


def test_the_results_snippet_runs_on_the_memory_backend() -> None:
    from asyncllm import MemoryBroker

    MemoryBroker.reset()
    namespace: dict[str, Any] = {}
    exec(block_containing("submit_many"), namespace)

    app = namespace["app"]
    handles = namespace["handles"]
    with running_worker(app):
        answers = app.wait(handles, timeout=30, tenant_id="acme")
    assert [answer.response.content for answer in answers] == ["#0", "#1", "#2"]
    app.close()
    MemoryBroker.reset()
