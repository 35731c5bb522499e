"""One behaviour suite for every result store: memory, SQLite and DynamoDB (moto)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
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
    ResultStore,
    SQLiteResultStore,
    Status,
)
from asyncllm._config import Settings
from asyncllm._dynamodb import DynamoDBResultStore, create_results_table

from .conftest import CHAT, running_worker
from .support import cli_environment, depth, run_cli, wait_for

StoreFactory = Callable[..., ResultStore]


def success(
    request_id: str, text: str = "first", tenant: str = "acme"
) -> AsyncResponse:
    completion = ChatResponse.from_text(text, model="test")
    return AsyncResponse(request_id=request_id, tenant_id=tenant, response=completion)


def failure(request_id: str, tenant: str = "acme") -> AsyncResponse:
    error = ErrorInfo(type="RuntimeError", message="provider down", retryable=True)
    return AsyncResponse(
        request_id=request_id, tenant_id=tenant, error=error, attempts=3
    )


def content_of(store: ResultStore, request_id: str) -> str | None:
    record = store.get(request_id)
    assert record is not None
    assert record.response is not None
    if record.response.response is None:
        return None
    return record.response.response.content


def new_table(endpoint: str) -> str:
    table = f"results-{uuid.uuid4().hex[:12]}"
    assert create_results_table(Settings(endpoint_url=endpoint), table)
    return table


@pytest.fixture(params=["memory", "sqlite", "dynamodb"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, sqs_endpoint: str
) -> Iterator[StoreFactory]:
    """Open stores of one kind; each call opens a fresh, empty one."""
    opened: list[ResultStore] = []

    def factory(ttl_seconds: float = 3600) -> ResultStore:
        store: ResultStore
        if request.param == "memory":
            store = MemoryResultStore(ttl_seconds)
        elif request.param == "sqlite":
            path = tmp_path / f"results-{len(opened)}.sqlite3"
            store = SQLiteResultStore(path, ttl_seconds)
        else:
            settings = Settings(endpoint_url=sqs_endpoint)
            table = new_table(sqs_endpoint)
            store = DynamoDBResultStore(table, settings, ttl_seconds)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> ResultStore:
    """An empty store of each kind, with a one-hour TTL."""
    return make_store()


# -- statuses ------------------------------------------------------------------------


def test_a_queued_request_becomes_completed_when_its_answer_is_stored(
    store: ResultStore,
) -> None:
    store.mark_queued("r-1", "acme")
    before = store.status("r-1")

    stored = store.put(success("r-1", "the sea is grey"))

    record = store.get("r-1", tenant_id="acme")
    assert before is Status.QUEUED
    assert stored is True
    assert record is not None
    assert record.status is Status.COMPLETED
    assert record.tenant_id == "acme"
    assert content_of(store, "r-1") == "the sea is grey"


def test_an_error_response_makes_the_request_failed_and_keeps_the_error(
    store: ResultStore,
) -> None:
    store.mark_queued("r-1", "acme")

    store.put(failure("r-1"))

    record = store.get("r-1")
    assert record is not None
    assert record.status is Status.FAILED
    assert record.response is not None
    assert record.response.error is not None
    assert record.response.error.message == "provider down"
    assert record.response.attempts == 3


def test_an_unknown_id_is_not_found(store: ResultStore) -> None:
    store.mark_queued("r-1", "acme")

    assert store.get("r-2") is None
    assert store.status("r-2") is Status.NOT_FOUND


def test_an_answer_without_a_queued_record_is_still_kept(store: ResultStore) -> None:
    stored = store.put(success("r-1", "submitted by another tool"))

    assert stored is True
    assert store.status("r-1", tenant_id="acme") is Status.COMPLETED


# -- first answer wins ---------------------------------------------------------------


def test_duplicate_answers_keep_the_first_one_without_an_error(
    store: ResultStore,
) -> None:
    store.mark_queued("r-1", "acme")

    outcomes = [
        store.put(success("r-1", "first")),
        store.put(success("r-1", "second")),
        store.put(failure("r-1")),
        store.put(success("r-1", "third")),
    ]

    assert outcomes == [True, False, False, False]
    assert store.status("r-1") is Status.COMPLETED
    assert content_of(store, "r-1") == "first"


def test_a_success_replaces_a_failure_but_nothing_replaces_a_success(
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

    assert outcomes == [True, False, True, False, False]
    assert store.status("r-1") is Status.COMPLETED
    assert content_of(store, "r-1") == "after a redrive"


def test_marking_an_answered_request_queued_again_keeps_its_answer(
    store: ResultStore,
) -> None:
    store.mark_queued("r-1", "acme")
    store.put(success("r-1", "kept"))

    store.mark_queued("r-1", "acme")

    assert store.status("r-1") is Status.COMPLETED
    assert content_of(store, "r-1") == "kept"


# -- tenants -------------------------------------------------------------------------


def test_another_tenants_id_reads_as_not_found(store: ResultStore) -> None:
    store.mark_queued("r-queued", "acme")
    store.mark_queued("r-answered", "acme")
    store.put(success("r-answered"))

    assert store.get("r-queued", tenant_id="globex") is None
    assert store.get("r-answered", tenant_id="globex") is None
    assert store.status("r-queued", tenant_id="globex") is Status.NOT_FOUND
    assert store.status("r-answered", tenant_id="globex") is Status.NOT_FOUND
    assert store.status("r-queued", tenant_id="acme") is Status.QUEUED
    assert store.status("r-answered", tenant_id="acme") is Status.COMPLETED


def test_an_answer_carrying_another_tenant_does_not_take_over_a_request(
    store: ResultStore,
) -> None:
    store.mark_queued("r-1", "acme")
    store.mark_queued("r-2", "acme")
    store.put(failure("r-2"))

    taken = [
        store.put(success("r-1", "not yours", tenant="globex")),
        store.put(success("r-2", "not yours", tenant="globex")),
    ]

    assert taken == [False, False]
    assert store.status("r-1", tenant_id="acme") is Status.QUEUED
    assert store.status("r-2", tenant_id="acme") is Status.FAILED
    assert store.status("r-1", tenant_id="globex") is Status.NOT_FOUND
    assert store.status("r-2", tenant_id="globex") is Status.NOT_FOUND


# -- expiry and stats ----------------------------------------------------------------


def test_records_past_the_ttl_read_as_expired(make_store: StoreFactory) -> None:
    store = make_store(ttl_seconds=-1)
    store.mark_queued("r-queued", "acme")
    store.mark_queued("r-answered", "acme")
    store.put(success("r-answered"))

    record = store.get("r-answered")
    store.expire()

    assert record is not None
    assert record.status is Status.EXPIRED
    assert record.response is None
    assert store.status("r-queued") is Status.EXPIRED
    assert store.status("r-answered") is Status.EXPIRED
    assert store.status("r-answered", tenant_id="globex") is Status.NOT_FOUND
    assert store.status("never-seen") is Status.NOT_FOUND


def test_stats_count_the_records_per_status(make_store: StoreFactory) -> None:
    store = make_store()
    for number in range(3):
        store.mark_queued(f"queued-{number}", "acme")
    for number in range(2):
        store.mark_queued(f"done-{number}", "globex")
        store.put(success(f"done-{number}", tenant="globex"))
    store.mark_queued("broken", "acme")
    store.put(failure("broken"))
    store.put(success("done-0", "duplicate", tenant="globex"))
    old = make_store(ttl_seconds=-1)
    old.mark_queued("old", "acme")

    counts = store.stats()

    assert counts == {
        Status.QUEUED: 3,
        Status.COMPLETED: 2,
        Status.FAILED: 1,
        Status.EXPIRED: 0,
    }
    assert old.stats()[Status.EXPIRED] == 1


# -- another process finds a response ------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "dynamodb"])
def test_a_response_published_while_nobody_looks_is_found_by_another_process(
    kind: str,
    make_app: Callable[..., AsyncLLM],
    app_settings: dict[str, Any],
    sqs_client: Any,
    sqs_endpoint: str,
    tmp_path: Path,
) -> None:
    if kind == "dynamodb":
        store_url = f"dynamodb://{new_table(sqs_endpoint)}"
    else:
        store_url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    app = make_app(result_store=store_url)

    @app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        return ChatResponse.from_text("found in another process", model="echo")

    response_url = app.broker.queue_url(app.settings.response_queue)
    with running_worker(app):
        handle = app.submit(CHAT, tenant_id="acme")
        wait_for(lambda: depth(sqs_client, response_url) == 1)
    queued = app.results.status(handle.id, tenant_id="acme")
    env = cli_environment(
        app_settings,
        ASYNCLLM_RESULT_STORE=store_url,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )

    done = run_cli(["result", handle.id, "--wait", "10", "--json"], env)

    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["status"] == "completed"
    assert printed["request_id"] == handle.id
    assert printed["tenant_id"] == "acme"
    message = printed["response"]["choices"][0]["message"]
    assert message["content"] == "found in another process"
    assert queued is Status.QUEUED
    assert app.results.status(handle.id, tenant_id="acme") is Status.COMPLETED
    assert depth(sqs_client, response_url) == 0
