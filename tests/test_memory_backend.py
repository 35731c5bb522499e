"""The main job on the in-memory broker: the same flows as on SQS, in one process."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from asyncllm import (
    AsyncLLM,
    AsyncRequest,
    ChatResponse,
    MemoryBroker,
    QueueOptions,
    Status,
    TerminalError,
    encode,
)
from asyncllm._wire import ATTR_REASON

from .conftest import CHAT, running_worker
from .support import Calls, wait_for

#: Long-poll wait of memory workers: short, so they stop quickly.
WAIT = 1


def dead_letters(app: AsyncLLM) -> list[dict[str, Any]]:
    """The messages waiting in the app's memory dead-letter queue."""
    dlq = app.check_queues().dead_letter_url
    return list(app.broker.messages(dlq))


def at_least(count: int, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages if there are at least ``count`` of them, else nothing."""
    return messages if len(messages) >= count else []


def attribute(message: dict[str, Any], name: str) -> str:
    return str(message["attributes"][name]["StringValue"])


def test_a_submitted_request_is_answered_and_found_by_id(memory_app: AsyncLLM) -> None:
    @memory_app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        return ChatResponse.from_text(
            str(request.request.messages[-1].content), model="e"
        )

    with running_worker(memory_app, wait_time_seconds=WAIT):
        handle = memory_app.submit(CHAT, tenant_id="acme")
        answer = handle.response(timeout=20)

    assert answer.ok
    assert answer.response is not None
    assert answer.response.content == CHAT["messages"][0]["content"]
    assert answer.attempts == 1
    assert handle.status() is Status.COMPLETED
    assert dead_letters(memory_app) == []


def test_a_handler_that_always_raises_runs_three_times_then_lands_in_the_dlq(
    memory_app: AsyncLLM,
) -> None:
    calls = Calls()

    @memory_app.handler
    def broken(request: AsyncRequest) -> ChatResponse:
        calls.add(request)
        raise RuntimeError("the provider is down")

    request = AsyncRequest(id="always-fails", tenant_id="acme", request=CHAT)
    with running_worker(memory_app, wait_time_seconds=WAIT):
        memory_app.send_request(request)
        answer = memory_app.get_result("always-fails", timeout=20)
        dead = wait_for(lambda: dead_letters(memory_app))

    assert calls.counts == {"always-fails": 3}
    assert not answer.ok
    assert answer.attempts == 3
    assert answer.error is not None
    assert answer.error.type == "RuntimeError"
    assert [m["body"] for m in dead] == [encode(request)]
    assert attribute(dead[0], "TenantID") == "acme"
    assert attribute(dead[0], "RequestID") == "always-fails"


def test_a_handler_that_fails_once_then_succeeds_answers_on_the_second_attempt(
    memory_app: AsyncLLM,
) -> None:
    calls = Calls()

    @memory_app.handler
    def flaky(request: AsyncRequest) -> ChatResponse:
        if calls.add(request) == 1:
            raise ConnectionError("connection reset")
        return ChatResponse.from_text("second time lucky", model="e")

    with running_worker(memory_app, wait_time_seconds=WAIT):
        handle = memory_app.submit(CHAT, tenant_id="acme", request_id="flaky-1")
        answer = handle.response(timeout=20)

    assert answer.ok
    assert answer.attempts == 2
    assert calls.counts == {"flaky-1": 2}
    assert dead_letters(memory_app) == []
    assert memory_app.broker.messages(memory_app.settings.request_queue) == []


def test_a_terminal_error_is_answered_once_and_dead_lettered_at_once(
    memory_app: AsyncLLM,
) -> None:
    calls = Calls()

    @memory_app.handler
    def refuse(request: AsyncRequest) -> ChatResponse:
        calls.add(request)
        raise TerminalError("invalid api key", code="invalid_api_key", status_code=401)

    with running_worker(memory_app, wait_time_seconds=WAIT):
        handle = memory_app.submit(CHAT, tenant_id="acme", request_id="terminal-1")
        answer = handle.response(timeout=20)
        dead = wait_for(lambda: dead_letters(memory_app))

    assert calls.counts == {"terminal-1": 1}
    assert answer.attempts == 1
    assert answer.error is not None
    assert answer.error.code == "invalid_api_key"
    assert json.loads(dead[0]["body"])["id"] == "terminal-1"
    assert "code invalid_api_key" in attribute(dead[0], ATTR_REASON)
    assert "invalid api key" not in attribute(dead[0], ATTR_REASON)


def test_an_unknown_handler_and_a_poison_body_go_to_the_dlq_and_the_worker_goes_on(
    memory_app: AsyncLLM,
) -> None:
    @memory_app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        return ChatResponse.from_text("still here", model="e")

    queue = memory_app.settings.request_queue
    with running_worker(memory_app, wait_time_seconds=WAIT):
        memory_app.submit(CHAT, tenant_id="acme", handler="no-such-handler")
        memory_app.broker.send(queue, "XX17ei1QWmlkazE4", {})
        dead = wait_for(lambda: at_least(2, dead_letters(memory_app)))
        answer = memory_app.submit(CHAT, tenant_id="acme").get(timeout=20)

    assert answer.content == "still here"
    reasons = sorted(attribute(message, ATTR_REASON) for message in dead)
    assert any("no-such-handler" in reason for reason in reasons)
    assert any("not JSON" in reason for reason in reasons)
    assert "XX17ei1QWmlkazE4" in [message["body"] for message in dead]


def test_create_queues_on_the_memory_broker_applies_the_options_given() -> None:
    MemoryBroker.reset()
    app = AsyncLLM("options", broker_url="memory://", result_store="memory://")
    try:
        setup = app.create_queues(
            QueueOptions(visibility_timeout=2, max_receive_count=5)
        )
    finally:
        app.close()
        MemoryBroker.reset()

    assert setup.visibility_timeout == 2
    assert setup.max_receive_count == 5


def test_an_idle_worker_without_long_polling_does_not_spin(
    memory_app: AsyncLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    receives: list[float] = []
    original = MemoryBroker.receive

    def counting(self: MemoryBroker, *args: Any) -> Any:
        receives.append(time.monotonic())
        return original(self, *args)

    monkeypatch.setattr(MemoryBroker, "receive", counting)

    @memory_app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        return ChatResponse.from_text("hi", model="e")

    assert memory_app.settings.wait_time_seconds == 0
    with running_worker(memory_app):
        started = time.monotonic()
        threading.Event().wait(1.0)
        window = [t for t in receives if started <= t <= started + 1.0]

    assert len(window) <= 20, f"{len(window)} empty receives in one second"
