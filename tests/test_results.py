"""Result stores and lookups: first answer wins, tenants, queued vs not found."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncllm import (
    AsyncLLM,
    AsyncRequest,
    AsyncResponse,
    ChatResponse,
    ErrorInfo,
    MemoryResultStore,
    ResultNotFound,
    ResultStore,
    ResultTimeout,
    SQLiteResultStore,
    Status,
    encode,
)
from asyncllm._wire import ATTR_REASON

from .conftest import CHAT, running_worker
from .support import (
    cli_environment,
    depth,
    receive,
    run_cli,
    string_attributes,
    wait_for,
)


def success(
    request_id: str, text: str = "first", tenant: str = "acme"
) -> AsyncResponse:
    completion = ChatResponse.from_text(text, model="test")
    return AsyncResponse(request_id=request_id, tenant_id=tenant, response=completion)


def failure(request_id: str, tenant: str = "acme") -> AsyncResponse:
    error = ErrorInfo(type="RuntimeError", message="down", retryable=True)
    return AsyncResponse(
        request_id=request_id, tenant_id=tenant, error=error, attempts=3
    )


def publish(sqs_client: Any, app: AsyncLLM, response: AsyncResponse) -> None:
    """Put a response on the app's response queue, as a worker would."""
    url = app.broker.queue_url(app.settings.response_queue)
    sqs_client.send_message(QueueUrl=url, MessageBody=encode(response))


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultStore]:
    """Each kind of result store, empty."""
    if request.param == "memory":
        opened: ResultStore = MemoryResultStore()
    else:
        opened = SQLiteResultStore(tmp_path / "state" / "results.sqlite3")
    yield opened
    opened.close()


# -- the stores ---------------------------------------------------------------------


def test_a_queued_request_reads_as_queued_without_a_response(
    store: ResultStore,
) -> None:
    store.mark_queued("r-1", "acme")

    record = store.get("r-1")

    assert record is not None
    assert record.status is Status.QUEUED
    assert record.response is None
    assert record.tenant_id == "acme"


def test_an_unknown_id_reads_as_none(store: ResultStore) -> None:
    store.mark_queued("r-1", "acme")

    assert store.get("r-2") is None


def test_the_first_answer_wins(store: ResultStore) -> None:
    store.mark_queued("r-1", "acme")

    first = store.put(success("r-1", "first"))
    second = store.put(success("r-1", "second"))
    third = store.put(failure("r-1"))

    record = store.get("r-1")
    assert (first, second, third) == (True, False, False)
    assert record is not None
    assert record.status is Status.COMPLETED
    assert record.response is not None
    assert record.response.response is not None
    assert record.response.response.content == "first"


def test_a_success_replaces_a_failure_but_a_failure_never_replaces_a_success(
    store: ResultStore,
) -> None:
    store.mark_queued("r-1", "acme")

    outcomes = [
        store.put(failure("r-1")),
        store.put(failure("r-1")),
        store.put(success("r-1", "after a redrive")),
        store.put(failure("r-1")),
        store.put(success("r-1", "too late")),
    ]

    record = store.get("r-1")
    assert outcomes == [True, False, True, False, False]
    assert record is not None
    assert record.status is Status.COMPLETED
    assert record.response is not None
    assert record.response.response is not None
    assert record.response.response.content == "after a redrive"


def test_marking_an_answered_request_queued_keeps_its_answer(
    store: ResultStore,
) -> None:
    store.put(success("r-1"))

    store.mark_queued("r-1", "acme")

    record = store.get("r-1")
    assert record is not None
    assert record.status is Status.COMPLETED


def test_another_tenants_id_reads_as_unknown(store: ResultStore) -> None:
    store.mark_queued("r-1", "acme")
    store.put(success("r-2", tenant="globex"))

    assert store.get("r-1", tenant_id="globex") is None
    assert store.get("r-2", tenant_id="acme") is None
    record = store.get("r-2", tenant_id="globex")
    assert record is not None
    assert record.tenant_id == "globex"


def test_an_answer_from_another_tenant_does_not_take_over_a_queued_request(
    store: ResultStore,
) -> None:
    store.mark_queued("r-1", "acme")

    taken = store.put(success("r-1", "not yours", tenant="globex"))

    record = store.get("r-1", tenant_id="acme")
    assert taken is False
    assert record is not None
    assert record.status is Status.QUEUED
    assert store.get("r-1", tenant_id="globex") is None


def test_a_stored_response_comes_back_unchanged(store: ResultStore) -> None:
    completion = {
        "id": "chatcmpl-417",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": "no"},
                "finish_reason": None,
                "logprobs": {"content": [{"token": "破", "logprob": -9999.0}]},
            }
        ],
        "usage": {"prompt_tokens": 2**53 + 1, "completion_tokens_details": None},
    }
    sent = AsyncResponse(request_id="r-1", tenant_id="acme", response=completion)

    store.put(sent)
    record = store.get("r-1")

    assert record is not None
    assert record.response is not None
    assert record.response.to_wire() == sent.to_wire()
    assert json.loads(encode(record.response)) == json.loads(encode(sent))


def test_two_sqlite_stores_on_one_file_see_each_others_answers(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    writer, reader = SQLiteResultStore(path), SQLiteResultStore(path)
    try:
        writer.mark_queued("r-1", "acme")
        queued = reader.get("r-1")
        writer.put(success("r-1"))
        answered = reader.get("r-1")
        late = reader.put(success("r-1", "late"))
    finally:
        writer.close()
        reader.close()

    assert queued is not None
    assert queued.status is Status.QUEUED
    assert answered is not None
    assert answered.status is Status.COMPLETED
    assert late is False


# -- lookups through an app ----------------------------------------------------------


def test_a_known_but_unanswered_request_times_out_rather_than_reading_as_not_found(
    make_app: Any,
) -> None:
    app = make_app()
    handle = app.submit(CHAT, tenant_id="acme")

    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        app.get_result(handle.id, timeout=0.5)
    waited = time.monotonic() - started

    assert 0.5 <= waited < 10
    assert app.status(handle.id) is Status.QUEUED
    assert not handle.ready()


def test_an_unknown_id_raises_result_not_found(make_app: Any) -> None:
    app = make_app()
    app.submit(CHAT, tenant_id="acme")

    with pytest.raises(ResultNotFound):
        app.get_result("never-submitted", timeout=0.5)

    assert app.status("never-submitted") is Status.NOT_FOUND


def test_another_tenants_request_reads_as_not_found(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    handle = app.submit(CHAT, tenant_id="acme")
    publish(sqs_client, app, success(handle.id))

    with pytest.raises(ResultNotFound):
        app.get_result(handle.id, tenant_id="globex", timeout=0.5)
    found = app.get_result(handle.id, tenant_id="acme", timeout=5)

    assert found.ok
    assert app.status(handle.id, tenant_id="globex") is Status.NOT_FOUND
    assert app.status(handle.id, tenant_id="acme") is Status.COMPLETED


def test_the_first_answer_on_the_response_queue_wins(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    handle = app.submit(CHAT, tenant_id="acme")
    response_url = app.broker.queue_url(app.settings.response_queue)

    publish(sqs_client, app, success(handle.id, "first"))
    first = app.get_result(handle.id, timeout=5)
    publish(sqs_client, app, success(handle.id, "second"))
    stored = app.collect(wait_seconds=1)
    again = app.get_result(handle.id)

    assert first.response is not None
    assert first.response.content == "first"
    assert stored == 0
    assert again.response is not None
    assert again.response.content == "first"
    assert depth(sqs_client, response_url) == 0


def test_a_message_on_the_response_queue_that_is_not_a_response_is_dead_lettered(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    handle = app.submit(CHAT, tenant_id="acme")
    url = app.broker.queue_url(app.settings.response_queue)
    dlq_url = sqs_client.get_queue_url(QueueName=f"{app.settings.response_queue}-dlq")
    sqs_client.send_message(QueueUrl=url, MessageBody='{"not": "a response"}')
    publish(sqs_client, app, success(handle.id))

    found = app.get_result(handle.id, timeout=10)
    dead = receive(sqs_client, dlq_url["QueueUrl"])

    assert found.ok
    assert [message["Body"] for message in dead] == ['{"not": "a response"}']
    assert "unknown envelope schema" in string_attributes(dead[0])[ATTR_REASON]
    assert depth(sqs_client, url) == 0


def test_a_response_published_while_nobody_looks_is_found_by_a_second_app(
    make_app: Any, sqs_client: Any, tmp_path: Path
) -> None:
    app = make_app()

    @app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        return ChatResponse.from_text("answered", model="echo")

    response_url = app.broker.queue_url(app.settings.response_queue)
    with running_worker(app):
        handle = app.submit(CHAT, tenant_id="acme")
        wait_for(lambda: depth(sqs_client, response_url) == 1)
    other = make_app(result_store=f"sqlite:///{tmp_path / 'other.sqlite3'}")

    found = other.get_result(handle.id, tenant_id="acme", timeout=5)

    assert found.response is not None
    assert found.response.content == "answered"
    assert other.status(handle.id) is Status.COMPLETED


def test_another_process_finds_a_response_with_the_result_command(
    make_app: Any,
    app_settings: dict[str, Any],
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    app = make_app()

    @app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        return ChatResponse.from_text("answered elsewhere", model="echo")

    response_url = app.broker.queue_url(app.settings.response_queue)
    with running_worker(app):
        handle = app.submit(CHAT, tenant_id="acme")
        wait_for(lambda: depth(sqs_client, response_url) == 1)
    store = f"sqlite:///{tmp_path / 'process.sqlite3'}"
    env = cli_environment(app_settings, ASYNCLLM_RESULT_STORE=store)

    done = run_cli(["result", handle.id, "--wait", "5", "--json"], env)

    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["status"] == "completed"
    assert printed["request_id"] == handle.id
    assert printed["tenant_id"] == "acme"
    assert printed["response"]["choices"][0]["message"]["content"] == (
        "answered elsewhere"
    )
    assert depth(sqs_client, response_url) == 0
