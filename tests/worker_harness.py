"""Test-side helpers for worker tests: worker processes, queue reading, polling.

Every wait here is bounded in time; every loop in count and time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from asyncllm import AsyncLLM, AsyncRequest, AsyncResponse, QueueOptions, QueueSetup
from asyncllm._wire import encode, make_attributes

from .conftest import CHAT
from .support import depth as queue_depth  # noqa: F401 - re-exported

PROJECT_ROOT = Path(__file__).resolve().parent.parent
APP_PATH = "tests.process_apps:app"

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns a truthy value, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def make_queues(
    app_settings: Mapping[str, Any], options: QueueOptions
) -> tuple[AsyncLLM, QueueSetup]:
    """Create this test's queues with ``options``; returns an app and the setup."""
    app = AsyncLLM("harness", **dict(app_settings))
    return app, app.create_queues(options)


def new_request(
    tenant_id: str = "acme",
    handler: str | None = None,
    text: str = "Name a colour of the sea at dusk.",
    **fields: Any,
) -> AsyncRequest:
    """Build a request with a fresh id."""
    chat = {**CHAT, "messages": [{"role": "user", "content": text}]}
    values: dict[str, Any] = {
        "id": f"req-{uuid.uuid4().hex[:12]}",
        "tenant_id": tenant_id,
        "request": chat,
        **fields,
    }
    if handler is not None:
        values["handler"] = handler
    return AsyncRequest.model_validate(values)


def send_requests(
    sqs_client: Any, queue_url: str, requests: Iterable[AsyncRequest]
) -> None:
    """Send requests the way another producer would: batches of plain JSON."""
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        reply = sqs_client.send_message_batch(QueueUrl=queue_url, Entries=batch)
        assert not reply.get("Failed"), reply.get("Failed")
        batch.clear()

    for index, request in enumerate(requests):
        batch.append(
            {
                "Id": str(index),
                "MessageBody": encode(request),
                "MessageAttributes": make_attributes(request.tenant_id, request.id),
            }
        )
        if len(batch) == 10:
            flush()
    if batch:
        flush()


@dataclass
class QueueReader:
    """The one receiver of a queue: reads and deletes every message it sees.

    Attributes:
        messages: Every message received, in order, as boto3 returned it.
    """

    sqs_client: Any
    queue_url: str
    messages: list[dict[str, Any]] = field(default_factory=list)

    def poll(self, wait_seconds: int = 1) -> int:
        """Receive (and delete) what is there now; returns how many arrived."""
        reply = self.sqs_client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_seconds,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        batch = reply.get("Messages", [])
        if batch:
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(batch)
            ]
            self.sqs_client.delete_message_batch(
                QueueUrl=self.queue_url, Entries=entries
            )
        self.messages.extend(batch)
        return len(batch)

    def drain(self, seconds: float, max_polls: int = 100) -> None:
        """Keep polling for ``seconds`` (at most ``max_polls`` receives)."""
        deadline = time.monotonic() + seconds
        for _ in range(max_polls):
            if time.monotonic() >= deadline:
                return
            self.poll(wait_seconds=0)
            time.sleep(0.1)

    def wait_for(
        self, predicate: Callable[[QueueReader], bool], timeout: float, what: str
    ) -> None:
        """Poll until ``predicate(self)`` holds, or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting {what}")
            self.poll(wait_seconds=1)

    def bodies(self) -> list[Any]:
        """The messages' bodies, parsed as JSON where they are JSON."""
        parsed = []
        for message in self.messages:
            try:
                parsed.append(json.loads(message["Body"]))
            except ValueError:
                parsed.append(message["Body"])
        return parsed


@dataclass
class ResponseReader(QueueReader):
    """The one receiver of a response queue, with responses grouped by id."""

    def responses(self) -> dict[str, list[AsyncResponse]]:
        """Every response received, by request id."""
        grouped: dict[str, list[AsyncResponse]] = {}
        for body in self.bodies():
            response = AsyncResponse.model_validate(body)
            grouped.setdefault(response.request_id, []).append(response)
        return grouped

    def wait_for_ids(self, request_ids: Iterable[str], timeout: float) -> None:
        """Poll until every one of ``request_ids`` has a response."""
        missing = set(request_ids)
        seen = 0

        def done(reader: QueueReader) -> bool:
            nonlocal seen
            for message in reader.messages[seen:]:
                missing.discard(json.loads(message["Body"])["request_id"])
            seen = len(reader.messages)
            return not missing

        try:
            self.wait_for(done, timeout, "for responses")
        except AssertionError as exc:
            sample = sorted(missing)[:3]
            raise AssertionError(
                f"{exc}: {len(missing)} missing, e.g. {sample}"
            ) from None


def worker_env(
    sqs_endpoint: str,
    app_settings: Mapping[str, Any],
    tmp_path: Path,
    **extra: str,
) -> dict[str, str]:
    """The environment of a worker process on this test's queues."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ASYNCLLM_", "SQS_", "PYTEST_"))
    }
    env.update(
        {
            "AWS_EC2_METADATA_DISABLED": "true",
            "ASYNCLLM_SQS_ENDPOINT_URL": sqs_endpoint,
            "ASYNCLLM_REQUEST_QUEUE": str(app_settings["request_queue"]),
            "ASYNCLLM_RESPONSE_QUEUE": str(app_settings["response_queue"]),
            "ASYNCLLM_RESULT_STORE": f"sqlite:///{tmp_path / 'worker-results.db'}",
            "ASYNCLLM_LEDGER": f"sqlite:///{tmp_path / 'worker-ledger.db'}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class WorkerProcess:
    """An ``asyncllm worker`` process with its log and its own temp directory.

    Args:
        name: A label, used for the log and temp directory names.
        env: The process environment (see `worker_env`).
        tmp_path: Where the log and the temp directory go.
        args: Extra ``asyncllm worker`` options.
        app_path: The app to load. Defaults to ``tests.process_apps:app``.
    """

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        tmp_path: Path,
        args: Iterable[str],
        app_path: str = APP_PATH,
    ) -> None:
        self.name = name
        self.log_path = tmp_path / f"{name}.log"
        self.temp_dir = tmp_path / f"{name}-tmp"
        self.temp_dir.mkdir()
        command = [sys.executable, "-m", "asyncllm", "worker", "-A", app_path]
        command += ["--wait-time-seconds", "1", *args]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env={**env, "TMPDIR": str(self.temp_dir)},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def log(self) -> str:
        """The process's output so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 20, count: int = 1) -> None:
        """Wait until ``count`` workers logged that they are receiving."""
        wait_until(
            lambda: (
                self.log().count(" receiving from ") >= count
                or self.process.poll() is not None
            ),
            timeout,
            what=f"{self.name} to start",
        )
        assert self.process.poll() is None, f"{self.name} exited:\n{self.log()}"

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send a signal to the process (and only to it)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; returns its status."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout:g} s:\n{self.log()}"
            ) from None

    def stop(self) -> None:
        """Make sure the process is gone: SIGTERM, then SIGKILL."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


@contextmanager
def worker_process(
    name: str,
    env: Mapping[str, str],
    tmp_path: Path,
    *args: str,
    app_path: str = APP_PATH,
) -> Iterator[WorkerProcess]:
    """Run a worker process for the duration of the block."""
    worker = WorkerProcess(name, env, tmp_path, args, app_path)
    try:
        yield worker
    finally:
        worker.stop()


def files_containing(root: Path, needle: str) -> list[Path]:
    """Files under ``root`` whose bytes contain ``needle`` (UTF-8)."""
    pattern = needle.encode("utf-8")
    return [
        path
        for path in root.rglob("*")
        if path.is_file() and pattern in path.read_bytes()
    ]


def child_pids(parent: int) -> set[int]:
    """The running children of a process, read from /proc."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process is gone
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = text.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z":
            children.add(int(stat.parent.name))
    return children


def is_running(pid: int) -> bool:
    """True while a process exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"
