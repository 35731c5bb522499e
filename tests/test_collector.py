"""The collector: response queue → result store, never losing a response."""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from asyncllm import (
    AsyncLLM,
    AsyncRequest,
    AsyncResponse,
    ChatResponse,
    MemoryResultStore,
    ResultStore,
    ResultTimeout,
    SQLiteResultStore,
    Status,
    encode,
)
from asyncllm._wire import ATTR_REASON, make_attributes

from .conftest import CHAT, running_worker
from .support import (
    PATIENCE_SECONDS,
    PROJECT_ROOT,
    cli_environment,
    depth,
    receive,
    stop_process,
    string_attributes,
    wait_for,
)

AppFactory = Callable[..., AsyncLLM]


class BrokenStore(MemoryResultStore):
    """A store whose disk is full: every answer fails to be stored."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def put(self, response: AsyncResponse) -> bool:
        self.attempts += 1
        raise OSError("disk full")


class AppWithStore(AsyncLLM):
    """An app that uses a given store instead of opening one from its URL."""

    def __init__(self, store: ResultStore, **settings: Any) -> None:
        super().__init__("store-test", **settings)
        self._store = store

    @property
    def results(self) -> ResultStore:
        return self._store


def answer(request_id: str, text: str, tenant: str = "acme") -> AsyncResponse:
    completion = ChatResponse.from_text(text, model="test")
    return AsyncResponse(request_id=request_id, tenant_id=tenant, response=completion)


def publish(sqs_client: Any, queue_url: str, response: AsyncResponse) -> None:
    """Put a response on the response queue, as a worker in any language would."""
    sqs_client.send_message(
        QueueUrl=queue_url,
        MessageBody=encode(response),
        MessageAttributes=make_attributes(response.tenant_id, response.request_id),
    )


def stored_text(store: ResultStore, request_id: str) -> str | None:
    record = store.get(request_id)
    assert record is not None
    assert record.response is not None
    assert record.response.response is not None
    return record.response.response.content


def echo(request: AsyncRequest) -> ChatResponse:
    text = request.request.messages[-1].content
    return ChatResponse.from_text(f"echo: {text}", model="echo")


# -- storing ------------------------------------------------------------------------


def test_a_response_the_store_refused_stays_on_the_queue_until_stored(
    make_app: AppFactory,
    app_settings: dict[str, Any],
    sqs_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asyncllm")
    app = make_app()
    response_url = app.broker.queue_url(app.settings.response_queue)
    dlq_url = app.broker.queue_url(f"{app.settings.response_queue}-dlq")
    broken = BrokenStore()
    failing = AppWithStore(broken, **app_settings)
    publish(sqs_client, response_url, answer("r-1", "kept safe"))

    refused = failing.collect(wait_seconds=1)
    left = depth(sqs_client, response_url)
    stored = wait_for(lambda: app.collect(wait_seconds=1), timeout=15)
    failing.close()

    assert broken.attempts == 1
    assert refused == 0
    [logged] = [r for r in caplog.records if "could not be stored" in r.message]
    assert (logged.request_id, logged.tenant_id) == ("r-1", "acme")  # type: ignore[attr-defined]
    assert left == 1
    assert stored == 1
    assert stored_text(app.results, "r-1") == "kept safe"
    assert depth(sqs_client, response_url) == 0
    assert depth(sqs_client, dlq_url) == 0


def test_a_response_body_that_is_not_a_response_goes_to_the_response_dlq(
    make_app: AppFactory, sqs_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncllm")
    app = make_app()
    response_url = app.broker.queue_url(app.settings.response_queue)
    dlq_url = app.broker.queue_url(f"{app.settings.response_queue}-dlq")
    sqs_client.send_message(
        QueueUrl=response_url,
        MessageBody="<html>502 Bad Gateway</html>",
        MessageAttributes=make_attributes("acme", "r-garbled"),
    )
    publish(sqs_client, response_url, answer("r-good", "fine"))

    stored = app.collect(wait_seconds=1)
    dead = receive(sqs_client, dlq_url)

    assert stored == 1
    assert stored_text(app.results, "r-good") == "fine"
    assert [message["Body"] for message in dead] == ["<html>502 Bad Gateway</html>"]
    attributes = string_attributes(dead[0])
    assert "not JSON" in attributes[ATTR_REASON]
    assert attributes["RequestID"] == "r-garbled"
    assert attributes["TenantID"] == "acme"
    assert app.status("r-garbled") is Status.NOT_FOUND
    [logged] = [r for r in caplog.records if "not a valid response" in r.message]
    assert (logged.request_id, logged.tenant_id) == ("r-garbled", "acme")  # type: ignore[attr-defined]
    assert depth(sqs_client, response_url) == 0


def test_duplicate_responses_for_one_id_leave_one_final_answer(
    make_app: AppFactory, sqs_client: Any
) -> None:
    app = make_app()
    response_url = app.broker.queue_url(app.settings.response_queue)
    app.results.mark_queued("r-1", "acme")
    app.results.mark_queued("r-2", "acme")

    publish(sqs_client, response_url, answer("r-1", "first"))
    first_pass = app.collect(wait_seconds=1)
    publish(sqs_client, response_url, answer("r-1", "second"))
    for copy in range(3):
        publish(sqs_client, response_url, answer("r-2", f"copy {copy}"))
    second_pass = wait_for(lambda: app.collect(wait_seconds=1), timeout=10)
    for _ in range(3):
        app.collect(wait_seconds=0)

    assert first_pass == 1
    assert second_pass == 1
    assert stored_text(app.results, "r-1") == "first"
    assert stored_text(app.results, "r-2") in {"copy 0", "copy 1", "copy 2"}
    assert app.results.stats()[Status.COMPLETED] == 2
    assert depth(sqs_client, response_url) == 0


# -- waiting for answers ------------------------------------------------------------


def test_get_returns_an_answer_that_arrives_while_it_waits(
    make_app: AppFactory,
) -> None:
    app = make_app()
    worker_app = make_app()
    worker_app.handler(echo)
    answered = threading.Event()
    errors: list[BaseException] = []
    delay = 1.0

    def late_worker() -> None:
        try:
            answered.wait(delay)
            with running_worker(worker_app):
                answered.wait(PATIENCE_SECONDS)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    handle = app.submit(CHAT, tenant_id="acme")
    thread = threading.Thread(target=late_worker, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        completion = handle.get(timeout=30)
        waited = time.monotonic() - started
    finally:
        answered.set()
        thread.join(PATIENCE_SECONDS)

    assert not errors
    assert completion.content == "echo: Name a colour of the sea at dusk."
    assert waited >= delay
    assert handle.status() is Status.COMPLETED


def test_get_on_a_request_never_answered_raises_result_timeout_at_the_timeout(
    make_app: AppFactory,
) -> None:
    app = make_app()
    handle = app.submit(CHAT, tenant_id="acme")
    timeout = 2.0

    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        handle.get(timeout=timeout)
    waited = time.monotonic() - started

    assert 0.9 * timeout <= waited <= 3 * timeout + 2
    assert handle.status() is Status.QUEUED


def test_wait_over_200_handles_returns_every_answer_in_order(
    make_app: AppFactory,
) -> None:
    app = make_app()
    app.handler(echo)
    prompts = [
        {"model": "test", "messages": [{"role": "user", "content": f"prompt {n}"}]}
        for n in range(200)
    ]

    with running_worker(app, concurrency=50):
        handles = app.submit_many(prompts, tenant_id="acme")
        answers = app.wait(handles, timeout=60)

    assert [a.request_id for a in answers] == [h.id for h in handles]
    texts = [a.response.content if a.response else None for a in answers]
    assert texts == [f"echo: prompt {n}" for n in range(200)]
    assert app.results.stats()[Status.COMPLETED] == 200


# -- collector processes ------------------------------------------------------------


@contextmanager
def collector_process(
    env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``asyncllm collect`` until the block ends; SIGTERM stops it."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "asyncllm", "collect"],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        stop_process(process)


def collecting(process: subprocess.Popen[bytes], log: Path) -> bool:
    return process.poll() is not None or "collector reading" in log.read_text()


def test_two_collector_processes_and_a_reader_share_sqlite_without_losing_any(
    make_app: AppFactory,
    app_settings: dict[str, Any],
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    count = 100
    app = make_app()
    response_url = app.broker.queue_url(app.settings.response_queue)
    dlq_url = app.broker.queue_url(f"{app.settings.response_queue}-dlq")
    # Long enough that SQS never hands a stored message out a second time.
    sqs_client.set_queue_attributes(
        QueueUrl=response_url, Attributes={"VisibilityTimeout": "30"}
    )
    ids = [f"r-{n:03d}" for n in range(count)]
    for request_id in ids:
        app.results.mark_queued(request_id, "acme")
    env = cli_environment(
        app_settings,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    logs = [tmp_path / "collector-1.log", tmp_path / "collector-2.log"]
    reader = SQLiteResultStore(Path(app_settings["result_store"][len("sqlite:///") :]))

    with ExitStack() as stack:
        processes = [stack.enter_context(collector_process(env, log)) for log in logs]
        for process, log in zip(processes, logs, strict=True):
            wait_for(functools.partial(collecting, process, log))
            assert process.poll() is None, log.read_text()
        for start in range(0, count, 10):
            entries = [
                {
                    "Id": request_id,
                    "MessageBody": encode(answer(request_id, f"answer {request_id}")),
                    "MessageAttributes": make_attributes("acme", request_id),
                }
                for request_id in ids[start : start + 10]
            ]
            reply = sqs_client.send_message_batch(
                QueueUrl=response_url, Entries=entries
            )
            assert not reply.get("Failed")
        wait_for(
            lambda: all(reader.status(i, "acme") is Status.COMPLETED for i in ids),
            timeout=30,
            interval=0.2,
        )
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=PATIENCE_SECONDS) for process in processes]

    texts = {request_id: stored_text(reader, request_id) for request_id in ids}
    counts = reader.stats()
    reader.close()
    output = "".join(log.read_text() for log in logs)
    assert codes == [0, 0], output
    assert texts == {request_id: f"answer {request_id}" for request_id in ids}
    assert counts[Status.COMPLETED] == count
    assert counts[Status.QUEUED] == 0
    assert "could not be stored" not in output
    assert depth(sqs_client, response_url) == 0
    assert depth(sqs_client, dlq_url) == 0
