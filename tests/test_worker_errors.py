"""What a worker does with messages and calls that go wrong.

Poison messages from other producers, terminal errors, rate limits, duplicate
submissions and handler time-outs, on a real SQS endpoint (moto's server).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asyncllm import (
    AsyncLLM,
    AsyncRequest,
    AsyncResponse,
    ChatResponse,
    QueueSetup,
    provider_error,
)
from asyncllm._wire import ATTR_REASON, encode, make_attributes

from .conftest import CHAT, running_worker
from .process_apps import (
    CALLS_ENV,
    RETRIES_ENV,
    RETRY_SECONDS_ENV,
    SLEEP_ENV,
    count_calls,
    install,
    read_calls,
)
from .worker_harness import (
    QueueReader,
    ResponseReader,
    new_request,
    queue_depth,
    send_requests,
    wait_until,
)

FOREIGN = Path(__file__).parent / "data" / "foreign"


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The call log the handlers of `tests.process_apps` write to."""
    path = tmp_path / "calls.log"
    monkeypatch.setenv(CALLS_ENV, str(path))
    monkeypatch.setenv(SLEEP_ENV, "0")
    return path


def reason_of(message: dict[str, Any]) -> str:
    """The dead-letter reason attribute of a received message ('' if none)."""
    attribute = message.get("MessageAttributes", {}).get(ATTR_REASON, {})
    return str(attribute.get("StringValue", ""))


def foreign_poison() -> list[tuple[str, dict[str, dict[str, str]], str, None]]:
    """Bodies from other producers in tests/data/foreign, with their attributes."""
    attributes = {
        entry["file"]: entry["MessageAttributes"]
        for entry in json.loads((FOREIGN / "attributes.json").read_text())
    }
    expected = {
        # A top-level "properties" key, "request_id" for "id", a tenant that
        # disagrees with the attribute: refused, never merged or guessed.
        "03-top-level-properties-key.json": "id: Field required",
        "04-base64-looking-plain-string.txt": "body is not JSON",
        "05-json-with-trailing-garbage.json": "Extra data",
    }
    return [
        ((FOREIGN / name).read_text(encoding="utf-8"), attributes[name], reason, None)
        for name, reason in expected.items()
    ]


def test_poison_messages_go_to_the_dead_letter_queue_with_a_reason(
    make_app: Callable[..., AsyncLLM], sqs_client: Any, calls: Path
) -> None:
    app = install(make_app())
    setup = app.check_queues()
    valid = new_request()
    valid_body = encode(valid)
    unknown_handler = new_request(handler="no_such_handler")
    streaming = new_request()
    streaming_body = json.loads(encode(streaming))
    streaming_body["request"]["stream"] = True
    mismatched = new_request(tenant_id="acme")
    wrong_id = new_request()
    missing_tenant = {"id": "req-no-tenant", "request": CHAT}
    kombu_like = {"body": "e30=", "properties": {"delivery_tag": "x"}, "headers": {}}
    # (body, attributes, what the reason must say, id of an expected error response)
    poison: list[tuple[str, dict[str, dict[str, str]], str, str | None]] = [
        ("this is not JSON {", {}, "body is not JSON", None),
        (valid_body + ' {"more": 1}', {}, "Extra data", None),
        (json.dumps(kombu_like), {}, "unknown envelope schema", None),
        (base64.b64encode(valid_body.encode()).decode(), {}, "not JSON", None),
        (json.dumps(missing_tenant), {}, "tenant_id: Field required", None),
        (
            encode(unknown_handler),
            make_attributes(unknown_handler.tenant_id, unknown_handler.id),
            "unknown handler 'no_such_handler'",
            unknown_handler.id,
        ),
        (
            json.dumps(streaming_body),
            make_attributes(streaming.tenant_id, streaming.id),
            "stream",
            streaming.id,
        ),
        (
            encode(mismatched),
            make_attributes("globex", mismatched.id),
            "TenantID attribute 'globex' disagrees",
            None,
        ),
        (
            encode(wrong_id),
            make_attributes(wrong_id.tenant_id, "req-someone-else"),
            "RequestID attribute 'req-someone-else' disagrees",
            None,
        ),
    ]
    poison += foreign_poison()
    dead_letters = QueueReader(sqs_client, setup.dead_letter_url)
    responses = ResponseReader(sqs_client, setup.response_url)

    with running_worker(app):
        for body, attributes, _, _ in poison:
            sqs_client.send_message(
                QueueUrl=setup.request_url,
                MessageBody=body,
                MessageAttributes=attributes,
            )
        dead_letters.wait_for(
            lambda reader: len(reader.messages) >= len(poison),
            timeout=30,
            what="for every poison message in the dead-letter queue",
        )
        # A valid request may carry a top-level "properties" key of its own.
        good = new_request(properties={"delivery_tag": "not kombu's"})
        send_requests(sqs_client, setup.request_url, [good])
        responses.wait_for_ids([good.id], timeout=20)
        dead_letters.drain(seconds=0.5)

    assert len(dead_letters.messages) == len(poison)
    by_body = {message["Body"]: message for message in dead_letters.messages}
    for body, _, expected, _ in poison:
        assert body in by_body, f"not dead-lettered: {body[:60]!r}"
        assert expected in reason_of(by_body[body]), reason_of(by_body[body])
    answered = responses.responses()
    expected_errors = {rid for *_, rid in poison if rid is not None}
    assert set(answered) == expected_errors | {good.id}
    for request_id in expected_errors:
        (error_response,) = answered[request_id]
        assert error_response.error is not None
        assert error_response.error.retryable is False
    (unknown,) = answered[unknown_handler.id]
    assert unknown.error is not None
    assert unknown.error.type == "UnknownHandler"
    assert answered[good.id][0].ok
    assert valid.id not in answered  # the base64 token was not decoded
    assert {row[0] for row in read_calls(calls)} == {good.id}
    assert queue_depth(sqs_client, setup.request_url) == 0


def test_a_body_that_is_not_utf8_is_dead_lettered_on_the_memory_broker(
    memory_app: AsyncLLM,
) -> None:
    install(memory_app)
    setup = memory_app.check_queues()
    body = b"\xff\xfe{not utf-8}"
    memory_app.broker.send(setup.request_url, body, {})  # type: ignore[arg-type]
    broker: Any = memory_app.broker

    with running_worker(memory_app):
        wait_until(lambda: broker.messages(setup.dead_letter_url), 10, what="the DLQ")
        answer = memory_app.submit(CHAT).get(timeout=10)

    (dead,) = broker.messages(setup.dead_letter_url)
    assert dead["body"] == body
    assert "not UTF-8" in dead["attributes"][ATTR_REASON]["StringValue"]
    assert answer.content is not None


def test_a_terminal_error_gets_one_call_one_error_response_and_the_dlq_at_once(
    make_app: Callable[..., AsyncLLM], sqs_client: Any, calls: Path
) -> None:
    app = install(make_app())
    setup = app.check_queues()
    request = new_request(handler="terminal")
    dead_letters = QueueReader(sqs_client, setup.dead_letter_url)
    responses = ResponseReader(sqs_client, setup.response_url)

    with running_worker(app):
        send_requests(sqs_client, setup.request_url, [request])
        responses.wait_for_ids([request.id], timeout=20)
        dead_letters.wait_for(
            lambda reader: bool(reader.messages), timeout=5, what="for the DLQ"
        )
        responses.drain(seconds=1)

    (answer,) = responses.responses()[request.id]
    assert answer.error is not None
    assert answer.error.type == "TerminalError"
    assert answer.error.retryable is False
    assert answer.error.code == "test_terminal"
    assert answer.error.status_code == 400
    assert count_calls(calls, request.id) == 1
    (dead,) = dead_letters.messages
    assert dead["Body"] == encode(request)
    assert reason_of(dead) == "terminal error: TerminalError, code test_terminal"
    assert queue_depth(sqs_client, setup.request_url) == 0


def call_times(calls: Path, request_id: str) -> list[float]:
    return [
        when
        for rid, event, _, when in read_calls(calls)
        if (rid, event) == (request_id, "start")
    ]


def run_rate_limited(
    app: AsyncLLM, sqs_client: Any, timeout: float
) -> tuple[AsyncRequest, AsyncResponse, QueueSetup]:
    """Run one ``retry_once`` request through a worker; return it and its answer."""
    install(app)
    setup = app.check_queues()
    request = new_request(handler="retry_once")
    responses = ResponseReader(sqs_client, setup.response_url)

    with running_worker(app):
        send_requests(sqs_client, setup.request_url, [request])
        responses.wait_for_ids([request.id], timeout=timeout)

    (answer,) = responses.responses()[request.id]
    return request, answer, setup


def test_retry_after_runs_the_request_again_after_the_delay_without_using_an_attempt(
    make_app: Callable[..., AsyncLLM],
    sqs_client: Any,
    calls: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(RETRIES_ENV, "1")
    monkeypatch.setenv(RETRY_SECONDS_ENV, "2")

    request, answer, _ = run_rate_limited(make_app(), sqs_client, timeout=20)

    assert answer.ok
    assert answer.attempts == 1
    first, second = call_times(calls, request.id)
    assert 1.8 <= second - first < 8


def test_repeated_rate_limits_are_answered_and_never_dead_lettered(
    make_app: Callable[..., AsyncLLM],
    sqs_client: Any,
    calls: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(RETRIES_ENV, "3")
    monkeypatch.setenv(RETRY_SECONDS_ENV, "1")

    request, answer, setup = run_rate_limited(make_app(), sqs_client, timeout=30)

    assert answer.ok
    assert answer.attempts == 1
    assert count_calls(calls, request.id, "retry") == 3
    assert count_calls(calls, request.id, "end") == 1
    assert queue_depth(sqs_client, setup.dead_letter_url) == 0
    assert queue_depth(sqs_client, setup.request_url) == 0


def test_rate_limits_beyond_the_allowed_delays_count_as_a_failed_attempt(
    make_app: Callable[..., AsyncLLM],
    sqs_client: Any,
    calls: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(RETRIES_ENV, "3")
    monkeypatch.setenv(RETRY_SECONDS_ENV, "0")
    app = install(make_app())
    setup = app.check_queues()
    request = new_request(handler="retry_once")
    responses = ResponseReader(sqs_client, setup.response_url)

    with running_worker(app, max_rate_limit_retries=2):
        send_requests(sqs_client, setup.request_url, [request])
        responses.wait_for_ids([request.id], timeout=30)

    (answer,) = responses.responses()[request.id]
    assert answer.ok
    # Two delays were free; the third rate limit used up the first attempt.
    assert answer.attempts == 2
    assert count_calls(calls, request.id, "start") == 4


def test_a_duplicate_of_an_answered_request_is_deleted_without_a_second_call(
    make_app: Callable[..., AsyncLLM],
    sqs_client: Any,
    calls: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asyncllm")
    app = install(make_app())
    setup = app.check_queues()
    request = new_request()
    responses = ResponseReader(sqs_client, setup.response_url)

    with running_worker(app):
        send_requests(sqs_client, setup.request_url, [request])
        responses.wait_for_ids([request.id], timeout=20)
        send_requests(sqs_client, setup.request_url, [request])
        wait_until(
            lambda: "already answered; duplicate deleted" in caplog.text,
            timeout=20,
            what="the duplicate",
        )
        wait_until(
            lambda: queue_depth(sqs_client, setup.request_url) == 0,
            timeout=10,
            what="an empty request queue",
        )
        responses.drain(seconds=1)

    assert len(responses.responses()[request.id]) == 1
    assert count_calls(calls, request.id) == 1
    assert queue_depth(sqs_client, setup.dead_letter_url) == 0


def test_a_handler_over_its_timeout_fails_three_attempts_then_dead_letters(
    make_app: Callable[..., AsyncLLM],
    sqs_client: Any,
    calls: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "5")
    app = install(make_app(), overtime_limit=0.3)
    setup = app.check_queues()
    request = new_request(handler="overtime")
    responses = ResponseReader(sqs_client, setup.response_url)
    dead_letters = QueueReader(sqs_client, setup.dead_letter_url)

    with running_worker(app):
        began = time.monotonic()
        send_requests(sqs_client, setup.request_url, [request])
        responses.wait_for_ids([request.id], timeout=30)
        dead_letters.wait_for(
            lambda reader: bool(reader.messages), timeout=15, what="for the DLQ"
        )

    assert time.monotonic() - began < 30
    (answer,) = responses.responses()[request.id]
    assert answer.error is not None
    assert answer.error.type == "TimeoutError"
    assert answer.error.retryable is True
    assert answer.attempts == 3
    assert count_calls(calls, request.id, "start") == 3
    assert count_calls(calls, request.id, "end") == 0
    (dead,) = dead_letters.messages
    assert dead["Body"] == encode(request)


def test_a_provider_error_is_retried_and_reported_with_its_status_and_code(
    make_app: Callable[..., AsyncLLM], sqs_client: Any
) -> None:
    app = make_app()
    attempts: list[str] = []

    @app.handler
    async def overloaded(request: AsyncRequest) -> ChatResponse:
        attempts.append(request.id)
        body = {"error": {"message": "overloaded", "code": "server_busy"}}
        raise provider_error(503, body)

    setup = app.check_queues()
    request = new_request()
    responses = ResponseReader(sqs_client, setup.response_url)

    with running_worker(app):
        send_requests(sqs_client, setup.request_url, [request])
        responses.wait_for_ids([request.id], timeout=30)

    (answer,) = responses.responses()[request.id]
    assert answer.error is not None
    assert answer.error.type == "ProviderError"
    assert answer.error.status_code == 503
    assert answer.error.code == "server_busy"
    assert answer.error.retryable is True
    assert answer.attempts == 3
    assert attempts == [request.id] * 3


def test_a_plain_function_over_its_timeout_does_not_hold_up_the_next_call(
    make_app: Callable[..., AsyncLLM], sqs_client: Any
) -> None:
    app = make_app()
    release = threading.Event()

    @app.handler(timeout_seconds=0.3)
    def stuck(request: AsyncRequest) -> ChatResponse:
        release.wait(10)
        return ChatResponse.from_text("late", model="m")

    @app.handler(timeout_seconds=1.5)
    def quick(request: AsyncRequest) -> ChatResponse:
        return ChatResponse.from_text("quick", model="m")

    setup = app.check_queues()
    slow, fast = new_request(handler="stuck"), new_request(handler="quick")
    responses = ResponseReader(sqs_client, setup.response_url)

    try:
        with running_worker(app, concurrency=1):
            send_requests(sqs_client, setup.request_url, [slow])
            responses.wait_for_ids([slow.id], timeout=20)
            # Three stuck calls still sleep on their threads; the slot is free.
            send_requests(sqs_client, setup.request_url, [fast])
            responses.wait_for_ids([fast.id], timeout=20)
    finally:
        release.set()

    (timed_out,) = responses.responses()[slow.id]
    assert timed_out.error is not None
    assert timed_out.error.type == "TimeoutError"
    (answer,) = responses.responses()[fast.id]
    assert answer.ok
    assert answer.attempts == 1
