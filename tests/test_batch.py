"""Batch files in OpenAI's Batch format: validate, send, wait, write results, resume."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from asyncllm import AsyncLLM, AsyncRequest, ChatResponse, TerminalError
from asyncllm.cli import cli

from .conftest import running_worker
from .support import (
    depth,
    peek,
    string_attributes,
    wait_for,
)

AppFactory = Callable[..., AsyncLLM]

CHAT_URL = "/v1/chat/completions"
REFUSE = "FORBIDDEN"


def batch_line(custom_id: str, text: str, url: str = CHAT_URL) -> str:
    body = {"model": "test-model", "messages": [{"role": "user", "content": text}]}
    line = {"custom_id": custom_id, "method": "POST", "url": url, "body": body}
    return json.dumps(line)


def write_batch(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def numbered_lines(count: int) -> list[str]:
    """Valid lines ``req-000`` … asking about their own line number."""
    return [
        batch_line(f"req-{n:03d}", f"question on line {n + 1}") for n in range(count)
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Calls:
    """Handler calls per request id, from any worker thread."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, request_id: str) -> None:
        with self._lock:
            self.counts[request_id] += 1


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def app(make_app: AppFactory, calls: Calls, sqs_client: Any) -> AsyncLLM:
    """An app whose offline handler answers each question, or refuses it.

    The request queue hides a received message for 30 s, so that a slow moment
    of the local endpoint never hands a request out twice: these tests count
    handler calls, and a lapsed visibility timeout would be a legitimate
    second delivery.
    """
    app = make_app()
    sqs_client.set_queue_attributes(
        QueueUrl=app.broker.queue_url(app.settings.request_queue),
        Attributes={"VisibilityTimeout": "30"},
    )

    @app.handler(timeout_seconds=30)
    async def offline(request: AsyncRequest) -> ChatResponse:
        calls.add(request.id)
        await asyncio.sleep(0.01)
        text = str(request.request.messages[-1].content)
        if REFUSE in text:
            raise TerminalError(
                "content refused", code="content_policy", status_code=400
            )
        return ChatResponse.from_text(f"answer to {text}", model=request.request.model)

    return app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, env: dict[str, str], *args: str) -> Result:
    """Run the CLI, then give the root logger back its handlers and level."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return runner.invoke(cli, ["--log-level", "WARNING", *args], env=env)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def request_ids_on(sqs_client: Any, queue_url: str, expect: int) -> list[str]:
    """The RequestID of each message now on a queue; they stay there, visible."""
    found = peek(sqs_client, queue_url, expect)
    return [string_attributes(message)["RequestID"] for message in found]


def three_hundred_lines_with_two_bad_ones() -> tuple[list[str], list[str]]:
    """300 lines; line 57 is cut short and line 200 repeats line 10's custom_id.

    Returns:
        The lines, and the custom_ids of the valid ones in input order.
    """
    lines = numbered_lines(300)
    lines[56] = lines[56][:40]
    lines[199] = batch_line("req-009", "a second question under an old id")
    valid = [f"req-{n:03d}" for n in range(300) if n not in (56, 199)]
    return lines, valid


# -- validation ----------------------------------------------------------------------


def test_bad_lines_are_reported_by_number_and_nothing_is_sent(
    runner: CliRunner,
    env: dict[str, str],
    app: AsyncLLM,
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    lines, _ = three_hundred_lines_with_two_bad_ones()
    source = write_batch(tmp_path / "batch.jsonl", lines)
    manifest = tmp_path / "batch.manifest.jsonl"

    result = invoke(runner, env, "batch", "submit", str(source), "-m", str(manifest))

    assert result.exit_code == 2, result.output
    problems = [line for line in result.stderr.splitlines() if ": line " in line]
    assert len(problems) == 2
    assert f"{source}: line 57: not JSON" in problems[0]
    assert problems[1] == (
        f"{source}: line 200: duplicate custom_id 'req-009' (first on line 10)"
    )
    assert "2 bad lines; nothing sent" in result.stderr
    assert not manifest.exists()
    assert depth(sqs_client, app.broker.queue_url(app.settings.request_queue)) == 0


def test_a_line_with_another_url_is_reported_with_its_number(
    runner: CliRunner, env: dict[str, str], app: AsyncLLM, tmp_path: Path
) -> None:
    lines = numbered_lines(5)
    lines[3] = batch_line("req-003", "embed me", url="/v1/embeddings")
    source = write_batch(tmp_path / "batch.jsonl", lines)

    result = invoke(runner, env, "batch", "submit", str(source))

    assert result.exit_code == 2
    assert "line 4: url '/v1/embeddings' is not /v1/chat/completions" in result.stderr


# -- a whole run ---------------------------------------------------------------------


def test_skip_invalid_sends_the_rest_and_results_have_one_line_per_custom_id(
    runner: CliRunner,
    env: dict[str, str],
    app: AsyncLLM,
    calls: Calls,
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    lines, valid = three_hundred_lines_with_two_bad_ones()
    source = write_batch(tmp_path / "batch.jsonl", lines)
    manifest = str(tmp_path / "batch.manifest.jsonl")
    output, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"

    with running_worker(app, concurrency=50):
        sent = invoke(
            runner,
            env,
            "batch",
            "submit",
            str(source),
            "-m",
            manifest,
            "--skip-invalid",
        )
        waited = invoke(runner, env, "batch", "wait", manifest, "--timeout", "60")
    written = invoke(
        runner, env, "batch", "results", manifest, "-o", str(output), "-e", str(errors)
    )

    assert sent.exit_code == 0, sent.output
    assert "sent 298, already sent 0, skipped 2 bad lines" in sent.stdout
    assert waited.exit_code == 0, waited.output
    assert "completed 298" in waited.stdout
    assert written.exit_code == 0, written.output
    results = read_jsonl(output)
    assert [line["custom_id"] for line in results] == valid
    for line in results:
        number = int(line["custom_id"].split("-")[1]) + 1
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        message = line["response"]["body"]["choices"][0]["message"]
        assert message["content"] == f"answer to question on line {number}"
    assert errors.read_text(encoding="utf-8") == ""
    assert sorted(calls.counts.values()) == [1] * 298
    assert depth(sqs_client, app.broker.queue_url(app.settings.request_queue)) == 0


def test_failed_requests_go_to_the_errors_file_and_not_the_output(
    runner: CliRunner, env: dict[str, str], app: AsyncLLM, tmp_path: Path
) -> None:
    lines = numbered_lines(20)
    refused = {"req-003", "req-011"}
    for custom_id in refused:
        number = int(custom_id.split("-")[1])
        lines[number] = batch_line(custom_id, f"{REFUSE} question {number}")
    source = write_batch(tmp_path / "batch.jsonl", lines)
    manifest = str(tmp_path / "batch.manifest.jsonl")
    output, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"

    with running_worker(app, concurrency=20):
        sent = invoke(runner, env, "batch", "submit", str(source), "-m", manifest)
        waited = invoke(runner, env, "batch", "wait", manifest, "--timeout", "30")
    written = invoke(
        runner, env, "batch", "results", manifest, "-o", str(output), "-e", str(errors)
    )

    assert sent.exit_code == 0, sent.output
    assert waited.exit_code == 0, waited.output
    assert "completed 18" in waited.stdout
    assert "failed 2" in waited.stdout
    assert written.exit_code == 0, written.output
    good, bad = read_jsonl(output), read_jsonl(errors)
    expected = [f"req-{n:03d}" for n in range(20)]
    assert [line["custom_id"] for line in good] == [
        custom_id for custom_id in expected if custom_id not in refused
    ]
    assert [line["custom_id"] for line in bad] == sorted(refused)
    for line in bad:
        assert line["error"]["code"] == "content_policy"
        assert line["error"]["message"] == "content refused"
        assert line["response"]["status_code"] == 400
    assert all(line["response"]["status_code"] == 200 for line in good)


# -- resuming ------------------------------------------------------------------------


def test_a_resumed_run_resends_only_unrecorded_lines_and_no_handler_runs_twice(
    runner: CliRunner,
    env: dict[str, str],
    app: AsyncLLM,
    calls: Calls,
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    source = write_batch(tmp_path / "batch.jsonl", numbered_lines(30))
    manifest = tmp_path / "batch.manifest.jsonl"
    request_url = app.broker.queue_url(app.settings.request_queue)
    submit = ("batch", "submit", str(source), "-m", str(manifest))

    with running_worker(app, concurrency=10):
        first = invoke(runner, env, *submit)
        waited = invoke(runner, env, "batch", "wait", str(manifest), "--timeout", "30")
    original = manifest.read_text(encoding="utf-8").splitlines()
    # A crash after sending the last ten lines but before recording them.
    manifest.write_text("\n".join(original[:21]) + "\n", encoding="utf-8")
    lost = [json.loads(line) for line in original[21:]]
    resumed = invoke(runner, env, *submit)
    resent = request_ids_on(sqs_client, request_url, expect=10)
    again = invoke(runner, env, *submit)
    with running_worker(app, concurrency=10):
        wait_for(lambda: depth(sqs_client, request_url) == 0)
    output = tmp_path / "out.jsonl"
    written = invoke(runner, env, "batch", "results", str(manifest), "-o", str(output))

    assert first.exit_code == 0, first.output
    assert waited.exit_code == 0, waited.output
    assert resumed.exit_code == 0, resumed.output
    assert "sent 10, already sent 20" in resumed.stdout
    assert sorted(resent) == sorted(entry["request_id"] for entry in lost)
    assert "sent 0, already sent 30" in again.stdout
    assert manifest.read_text(encoding="utf-8").splitlines() == original
    assert len(calls.counts) == 30
    assert set(calls.counts.values()) == {1}
    assert written.exit_code == 0, written.output
    assert [line["custom_id"] for line in read_jsonl(output)] == [
        f"req-{n:03d}" for n in range(30)
    ]
