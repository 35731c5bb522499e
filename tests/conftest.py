"""Shared fixtures: a real SQS endpoint (moto's server) on 127.0.0.1, apps, workers."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from asyncllm import AsyncLLM, MemoryBroker, QueueOptions, Worker
from asyncllm._local import LocalSQS

from .support import cli_environment

# Never let boto3 look for credentials or a region outside this machine.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_REGION"] = "us-east-1"
os.environ.pop("AWS_PROFILE", None)
# Default stores (results, ledger) go to a throw-away state directory, removed
# when the session ends (each xdist worker has its own).
_STATE_DIR = tempfile.TemporaryDirectory(prefix="asyncllm-test-state-")
os.environ["XDG_STATE_HOME"] = _STATE_DIR.name
for _name in list(os.environ):
    if _name.startswith(("ASYNCLLM_", "SQS_")):
        del os.environ[_name]

#: Visibility timeout of test queues: short, so retries and redrives are quick.
TEST_VISIBILITY = 2


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the throw-away state directory of this test process."""
    _STATE_DIR.cleanup()


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    """A moto SQS server for this test process, bound to 127.0.0.1."""
    with LocalSQS() as server:
        yield server.endpoint_url


@pytest.fixture
def sqs_client(sqs_endpoint: str) -> Any:
    """A plain boto3 client on the local endpoint, for what other programs do."""
    return boto3.client("sqs", endpoint_url=sqs_endpoint, region_name="us-east-1")


@pytest.fixture
def queue_prefix() -> str:
    """A prefix that makes this test's queues its own."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def app_settings(
    sqs_endpoint: str, queue_prefix: str, tmp_path: Path
) -> dict[str, Any]:
    """Settings for an app on fresh, unique SQS queues."""
    return {
        "endpoint_url": sqs_endpoint,
        "request_queue": f"{queue_prefix}-requests",
        "response_queue": f"{queue_prefix}-responses",
        "result_store": f"sqlite:///{tmp_path / 'results.sqlite3'}",
        "ledger": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        "wait_time_seconds": 1,
    }


@pytest.fixture
def make_app(app_settings: dict[str, Any]) -> Iterator[Callable[..., AsyncLLM]]:
    """Build apps on this test's queues; the queues are created once."""
    apps: list[AsyncLLM] = []
    created: list[bool] = []

    def factory(**overrides: Any) -> AsyncLLM:
        app = AsyncLLM("test", **{**app_settings, **overrides})
        if not created and app.settings.transport == "sqs":
            app.create_queues(test_queue_options())
            created.append(True)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.close()


def test_queue_options(**changes: Any) -> QueueOptions:
    """Queue settings for tests: short visibility and polling."""
    values: dict[str, Any] = {
        "visibility_timeout": TEST_VISIBILITY,
        "receive_wait_seconds": 0,
    }
    values.update(changes)
    return QueueOptions(**values)


test_queue_options.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
def memory_app(tmp_path: Path) -> Iterator[AsyncLLM]:
    """An app on the in-memory broker and store, with fresh queues."""
    MemoryBroker.reset()
    app = AsyncLLM(
        "memory-test",
        broker_url="memory://",
        result_store="memory://",
        wait_time_seconds=0,
    )
    app.create_queues(test_queue_options())
    yield app
    app.close()
    MemoryBroker.reset()


@contextmanager
def running_worker(app: AsyncLLM, **options: Any) -> Iterator[Worker]:
    """Run a worker for ``app`` in a thread for the duration of the block."""
    options.setdefault("retry_backoff_seconds", 0)
    options.setdefault("grace_seconds", 5)
    worker = app.worker(**options)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run(install_signal_handlers=False)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-worker", daemon=True)
    thread.start()
    try:
        assert worker.wait_started(20) or errors, "worker did not start"
        if errors:
            raise errors[0]
        yield worker
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive(), "worker did not stop"
    if errors:
        raise errors[0]


CHAT = {
    "model": "test-model",
    "messages": [{"role": "user", "content": "Name a colour of the sea at dusk."}],
}


@pytest.fixture
def runner() -> Iterator[CliRunner]:
    """Click's runner; the root logger is restored after the CLI configured it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CliRunner()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def env(app_settings: dict[str, Any]) -> dict[str, str]:
    """The environment of a CLI that uses this test's queues and result store."""
    return cli_environment(app_settings)
