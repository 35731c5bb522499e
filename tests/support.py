"""Helpers the tests share: bounded polling of queues and worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from click.testing import CliRunner, Result

from asyncllm import AsyncRequest
from asyncllm.cli import cli

T = TypeVar("T")

#: The project root, the working directory of every subprocess.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: The longest any test waits for something to happen.
PATIENCE_SECONDS = 20.0


def wait_for(
    check: Callable[[], T], timeout: float = PATIENCE_SECONDS, interval: float = 0.1
) -> T:
    """Call ``check`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = check()
        if value or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    assert value, f"gave up waiting after {timeout:g} s for {check}"
    return value


def receive(
    sqs_client: Any,
    queue_url: str,
    expect: int = 1,
    timeout: float = PATIENCE_SECONDS,
) -> list[dict[str, Any]]:
    """Receive messages with boto3 until ``expect`` distinct ones arrived.

    Messages are received with all their attributes and are not deleted.
    Returns what arrived before ``timeout``, which may be fewer than expected.
    """
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout) + 2):
        if len(found) >= expect or time.monotonic() >= deadline:
            break
        reply = sqs_client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
            VisibilityTimeout=30,
        )
        for message in reply.get("Messages", []):
            found.setdefault(message["MessageId"], message)
    return list(found.values())


def peek(sqs_client: Any, queue_url: str, expect: int) -> list[dict[str, Any]]:
    """Receive ``expect`` messages as `receive` does, then make them visible again."""
    found = receive(sqs_client, queue_url, expect)
    for message in found:
        sqs_client.change_message_visibility(
            QueueUrl=queue_url,
            ReceiptHandle=message["ReceiptHandle"],
            VisibilityTimeout=0,
        )
    return found


def drain(sqs_client: Any, queue_url: str) -> list[dict[str, Any]]:
    """Receive and delete every message now in a queue (up to 100)."""
    taken: list[dict[str, Any]] = []
    for _ in range(10):
        reply = sqs_client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
        )
        messages = reply.get("Messages", [])
        if not messages:
            break
        for message in messages:
            sqs_client.delete_message(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
        taken += messages
    return taken


def depth(sqs_client: Any, queue_url: str) -> int:
    """Return how many messages a queue holds: visible, in flight and delayed."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    reply = sqs_client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)
    return sum(int(reply["Attributes"].get(name, "0")) for name in names)


def string_attributes(message: dict[str, Any]) -> dict[str, str]:
    """Return a boto3 message's attributes as name → value."""
    attributes = message.get("MessageAttributes", {})
    return {name: value["StringValue"] for name, value in attributes.items()}


def cli_environment(settings: dict[str, Any], **changes: str) -> dict[str, str]:
    """Return the environment of a CLI process that uses an app's queues."""
    env = dict(os.environ)
    env.update(
        {
            "ASYNCLLM_SQS_ENDPOINT_URL": settings["endpoint_url"],
            "ASYNCLLM_REQUEST_QUEUE": settings["request_queue"],
            "ASYNCLLM_RESPONSE_QUEUE": settings["response_queue"],
            "ASYNCLLM_RESULT_STORE": settings["result_store"],
            "ASYNCLLM_LEDGER": settings["ledger"],
            "ASYNCLLM_WAIT_TIME_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(changes)
    return env


def run_cli(
    args: list[str], env: dict[str, str], stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m asyncllm ARGS`` in the project root and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "asyncllm", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=timeout,
        check=False,
    )


@contextmanager
def worker_process(
    env: dict[str, str], log_path: Path, app: str = "tests.apps:app"
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m asyncllm worker`` until the block ends.

    The block starts once the worker logged that it is receiving. On leaving,
    the worker is stopped with SIGTERM; the caller checks its exit status.
    """
    command = [sys.executable, "-m", "asyncllm", "worker", "-A", app]
    command += ["--wait-time-seconds", "1", "--retry-backoff-seconds", "0"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: process.poll() is not None or _receiving(log_path))
        assert process.poll() is None, log_path.read_text(errors="replace")
        yield process
    finally:
        stop_process(process)


def calls_of(path: Path, request_id: str) -> int:
    """Return how many handler calls a ``tests.apps`` call file records for an id."""
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    return sum(1 for line in lines if line.split(" ")[0] == request_id)


def _receiving(log_path: Path) -> bool:
    return "receiving from" in log_path.read_text(errors="replace")


def invoke(
    runner: CliRunner, env: dict[str, str], *args: str, stdin: str | None = None
) -> Result:
    """Run the CLI in-process with ``env`` as its environment."""
    return runner.invoke(cli, list(args), env=env, input=stdin)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process that still runs; SIGKILL it if it outlives our patience."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=PATIENCE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=PATIENCE_SECONDS)


class Calls:
    """Counts handler calls per request id, from any thread."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, request: AsyncRequest) -> int:
        with self._lock:
            self.counts[request.id] += 1
            return self.counts[request.id]
