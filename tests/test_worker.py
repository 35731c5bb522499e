"""The worker over a real SQS endpoint: handlers, retries, the dead-letter queue."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from asyncllm import (
    AsyncLLM,
    AsyncRequest,
    ChatResponse,
    RequestFailed,
    Status,
    TerminalError,
    encode,
)
from asyncllm._broker import Received, SQSBroker
from asyncllm._wire import ATTR_REASON

from .conftest import CHAT, running_worker
from .support import Calls, depth, drain, receive, string_attributes, wait_for

GO_STYLE_BODY = {
    "ID": "go-7c1d-7b3a",
    "TenantID": "acme-freight",
    "Request": {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": "Bay 3 \u003cb\u003efull\u003c/b\u003e"}
        ],
        "seed": 2**53 + 1,
    },
    "Provider": "",
    "CreatedAt": "2026-12-04T10:15:30.123456789Z",
}


def reply(request: AsyncRequest, text: str = "") -> ChatResponse:
    content = request.request.messages[-1].content
    return ChatResponse.from_text(text or str(content), model="test")


def echo_app(make_app: Any, text: str = "") -> tuple[AsyncLLM, Calls]:
    """An app whose one handler echoes the prompt (or ``text``), counting calls."""
    app = make_app()
    calls = Calls()

    @app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        calls.add(request)
        return reply(request, text)

    return app, calls


def urls(app: AsyncLLM) -> tuple[str, str, str]:
    """The app's request, response and dead-letter queue URLs."""
    setup = app.check_queues()
    return setup.request_url, setup.response_url, setup.dead_letter_url


def make_request(request_id: str, **fields: Any) -> AsyncRequest:
    return AsyncRequest(id=request_id, tenant_id="acme", request=CHAT, **fields)


def responses_for(sqs_client: Any, response_url: str, request_id: str) -> list[Any]:
    """Take every response on the queue and return those for one request."""
    bodies = [json.loads(m["Body"]) for m in drain(sqs_client, response_url)]
    return [body for body in bodies if body["request_id"] == request_id]


# -- success ----------------------------------------------------------------------


def test_a_raw_go_style_request_without_attributes_is_answered(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    seen: list[AsyncRequest] = []

    @app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        seen.append(request)
        return reply(request)

    request_url, _, _ = urls(app)
    with running_worker(app):
        sqs_client.send_message(
            QueueUrl=request_url, MessageBody=json.dumps(GO_STYLE_BODY)
        )
        answer = app.get_result("go-7c1d-7b3a", tenant_id="acme-freight", timeout=20)

    assert answer.ok
    assert answer.response is not None
    assert answer.response.content == "Bay 3 <b>full</b>"
    assert answer.attempts == 1
    assert seen[0].provider is None
    assert seen[0].created_at == "2026-12-04T10:15:30.123456789Z"
    assert seen[0].request.seed == 2**53 + 1


def test_an_async_handler_and_a_plain_function_both_answer(make_app: Any) -> None:
    app = make_app()
    threads: dict[str, str] = {}

    @app.handler(name="plain")
    def plain(request: AsyncRequest) -> ChatResponse:
        threads["plain"] = threading.current_thread().name
        return reply(request, "from a function")

    @app.handler(name="coroutine")
    async def coroutine(request: AsyncRequest) -> ChatResponse:
        await asyncio.sleep(0.01)
        threads["coroutine"] = threading.current_thread().name
        return reply(request, "from a coroutine")

    with running_worker(app):
        first = app.submit(CHAT, tenant_id="acme", handler="plain")
        second = app.submit(CHAT, tenant_id="acme", handler="coroutine")
        answers = first.get(timeout=20), second.get(timeout=20)

    assert [a.content for a in answers] == ["from a function", "from a coroutine"]
    assert threads["coroutine"] == "test-worker"
    assert threads["plain"] != "test-worker"


def test_a_handler_returning_a_dict_is_validated_into_a_chat_response(
    make_app: Any,
) -> None:
    app = make_app()

    @app.handler
    def as_dict(request: AsyncRequest) -> dict[str, Any]:
        message = {"role": "assistant", "content": "dict answer", "refusal": None}
        return {
            "id": "chatcmpl-417",
            "system_fingerprint": "fp_local",
            "choices": [{"index": 0, "message": message, "finish_reason": None}],
        }

    with running_worker(app):
        answer = app.submit(CHAT, tenant_id="acme").response(timeout=20)

    assert answer.response is not None
    assert isinstance(answer.response, ChatResponse)
    assert answer.response.content == "dict answer"
    wire = answer.response.to_wire()
    assert wire["system_fingerprint"] == "fp_local"
    assert wire["choices"][0]["finish_reason"] is None
    assert wire["choices"][0]["message"]["refusal"] is None


def test_the_request_the_handler_sees_is_the_request_submitted(
    make_app: Any,
) -> None:
    app = make_app()
    seen: list[AsyncRequest] = []

    @app.handler
    def record(request: AsyncRequest) -> ChatResponse:
        seen.append(request)
        return reply(request)

    chat = {**CHAT, "seed": 2**53 + 1, "logit_bias": {"00042": -1}, "top_k": 4}
    with running_worker(app):
        handle = app.submit(chat, tenant_id="acme", provider="openai")
        handle.get(timeout=20)

    assert seen[0].id == handle.id
    assert seen[0].provider == "openai"
    assert seen[0].request.to_wire() == chat


# -- failures and the dead-letter queue ---------------------------------------------


def test_a_handler_that_always_raises_runs_three_times_then_lands_in_the_dlq(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    calls = Calls()

    @app.handler
    def broken(request: AsyncRequest) -> ChatResponse:
        calls.add(request)
        raise RuntimeError("the provider is down")

    request_url, response_url, dlq_url = urls(app)
    request = make_request("always-fails")
    with running_worker(app):
        app.send_request(request)
        dead = receive(sqs_client, dlq_url)

    assert calls.counts == {"always-fails": 3}
    assert [m["Body"] for m in dead] == [encode(request)]
    assert string_attributes(dead[0])["TenantID"] == "acme"
    assert string_attributes(dead[0])["RequestID"] == "always-fails"
    errors = responses_for(sqs_client, response_url, "always-fails")
    assert len(errors) == 1
    assert errors[0]["attempts"] == 3
    assert errors[0]["response"] is None
    assert errors[0]["error"]["type"] == "RuntimeError"
    assert errors[0]["error"]["retryable"] is True
    assert depth(sqs_client, request_url) == 0


def test_the_error_of_a_request_that_ran_out_of_attempts_is_found_by_id(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()

    @app.handler
    def broken(request: AsyncRequest) -> ChatResponse:
        raise ValueError("bad gateway")

    with running_worker(app):
        handle = app.submit(CHAT, tenant_id="acme")
        answer = handle.response(timeout=20)

    assert not answer.ok
    assert answer.error is not None
    assert answer.error.message == "bad gateway"
    assert answer.attempts == 3
    assert handle.status() is Status.FAILED


def test_a_handler_that_fails_once_then_succeeds_answers_on_the_second_attempt(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    calls = Calls()

    @app.handler
    def flaky(request: AsyncRequest) -> ChatResponse:
        if calls.add(request) == 1:
            raise ConnectionError("connection reset")
        return reply(request, "second time lucky")

    request_url, response_url, dlq_url = urls(app)
    with running_worker(app):
        handle = app.submit(CHAT, tenant_id="acme", request_id="flaky-1")
        answer = handle.response(timeout=20)
        leftover = responses_for(sqs_client, response_url, "flaky-1")

    assert answer.ok
    assert answer.attempts == 2
    assert answer.response is not None
    assert answer.response.content == "second time lucky"
    assert calls.counts == {"flaky-1": 2}
    assert leftover == []
    assert depth(sqs_client, dlq_url) == 0
    assert depth(sqs_client, request_url) == 0


def test_a_terminal_error_is_answered_once_and_dead_lettered_at_once(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    calls = Calls()

    @app.handler
    def too_long(request: AsyncRequest) -> ChatResponse:
        calls.add(request)
        raise TerminalError(
            "context length exceeded", code="context_length_exceeded", status_code=400
        )

    request_url, _, dlq_url = urls(app)
    request = make_request("terminal-1")
    with running_worker(app):
        app.send_request(request)
        dead = receive(sqs_client, dlq_url)
        answer = app.get_result("terminal-1", timeout=20)

    assert calls.counts == {"terminal-1": 1}
    assert answer.attempts == 1
    assert answer.error is not None
    assert answer.error.type == "TerminalError"
    assert answer.error.code == "context_length_exceeded"
    assert answer.error.status_code == 400
    assert answer.error.retryable is False
    assert [m["Body"] for m in dead] == [encode(request)]
    reason = string_attributes(dead[0])[ATTR_REASON]
    assert reason == "terminal error: TerminalError, code context_length_exceeded"
    assert answer.error.message == "context length exceeded"
    assert depth(sqs_client, request_url) == 0


def test_an_unknown_handler_goes_to_the_dlq_with_a_reason_and_the_worker_goes_on(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()

    @app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        return reply(request, "still here")

    _, _, dlq_url = urls(app)
    with running_worker(app):
        lost = app.submit(CHAT, tenant_id="acme", handler="no-such-handler")
        dead = receive(sqs_client, dlq_url)
        good = app.submit(CHAT, tenant_id="acme")
        answer = good.get(timeout=20)
        refusal = lost.response(timeout=20)

    assert answer.content == "still here"
    assert len(dead) == 1
    assert json.loads(dead[0]["Body"])["id"] == lost.id
    reason = string_attributes(dead[0])[ATTR_REASON]
    assert "no-such-handler" in reason
    assert not refusal.ok
    assert refusal.error is not None
    assert "no-such-handler" in refusal.error.message


def test_a_body_nested_past_any_parser_is_dead_lettered_at_once_with_a_reason(
    make_app: Any, sqs_client: Any, caplog: Any
) -> None:
    caplog.set_level("INFO", logger="asyncllm")
    app, calls = echo_app(make_app, text="still here")

    body = '{"a":' * 5000 + "1" + "}" * 5000
    attributes = {
        "TenantID": {"DataType": "String", "StringValue": "acme"},
        "RequestID": {"DataType": "String", "StringValue": "deep-1"},
    }
    request_url, _, dlq_url = urls(app)
    with running_worker(app):
        sqs_client.send_message(
            QueueUrl=request_url, MessageBody=body, MessageAttributes=attributes
        )
        dead = receive(sqs_client, dlq_url)
        good = app.submit(CHAT, tenant_id="acme")
        answer = good.get(timeout=20)

    assert answer.content == "still here"
    assert [m["Body"] for m in dead] == [body]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert "at most 100" in string_attributes(dead[0])[ATTR_REASON]
    assert calls.counts == {good.id: 1}
    assert depth(sqs_client, request_url) == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("XX17ei1QWmlkazE4", id="base64-looking-token"),
        pytest.param('{"ID":"x","TenantID":"t","Request":{}}{"ID":"y"', id="garbage"),
        pytest.param("  \n", id="blank"),
    ],
)
def test_a_poison_body_goes_to_the_dlq_unchanged_and_the_worker_goes_on(
    body: str, make_app: Any, sqs_client: Any
) -> None:
    app, calls = echo_app(make_app, text="still here")

    request_url, _, dlq_url = urls(app)
    with running_worker(app):
        sqs_client.send_message(QueueUrl=request_url, MessageBody=body)
        dead = receive(sqs_client, dlq_url)
        good = app.submit(CHAT, tenant_id="acme")
        answer = good.get(timeout=20)

    assert answer.content == "still here"
    assert [m["Body"] for m in dead] == [body]
    assert "not JSON" in string_attributes(dead[0])[ATTR_REASON]
    assert calls.counts == {good.id: 1}
    assert depth(sqs_client, request_url) == 0


def test_a_body_whose_tenant_attribute_disagrees_is_dead_lettered_unanswered(
    make_app: Any, sqs_client: Any
) -> None:
    app, calls = echo_app(make_app)

    request_url, response_url, dlq_url = urls(app)
    body = json.dumps(GO_STYLE_BODY)
    with running_worker(app):
        sqs_client.send_message(
            QueueUrl=request_url,
            MessageBody=body,
            MessageAttributes={
                "TenantID": {"DataType": "String", "StringValue": "other-tenant"}
            },
        )
        dead = receive(sqs_client, dlq_url)

    assert [m["Body"] for m in dead] == [body]
    attributes = string_attributes(dead[0])
    assert attributes["TenantID"] == "other-tenant"
    assert "TenantID attribute" in attributes[ATTR_REASON]
    assert calls.counts == {}
    assert drain(sqs_client, response_url) == []


def test_a_body_with_a_top_level_properties_key_never_reaches_a_handler(
    make_app: Any, sqs_client: Any
) -> None:
    app, calls = echo_app(make_app)

    request_url, _, dlq_url = urls(app)
    body = json.dumps(
        {
            "properties": {"source": "billing-svc", "priority": "high"},
            "request_id": "node-1",
            "tenant_id": "acme",
            "request": CHAT,
        }
    )
    with running_worker(app):
        sqs_client.send_message(QueueUrl=request_url, MessageBody=body)
        dead = receive(sqs_client, dlq_url)

    assert [m["Body"] for m in dead] == [body]
    assert ATTR_REASON in string_attributes(dead[0])
    assert calls.counts == {}


@pytest.mark.parametrize(
    ("chat", "field"),
    [
        pytest.param({**CHAT, "stream": True}, "request.stream", id="stream"),
        pytest.param({"model": "m", "messages": []}, "request.messages", id="empty"),
        pytest.param(
            {"model": "m", "messages": [{"role": "user", "content": "\ud83d"}]},
            "lone surrogate",
            id="lone-surrogate",
        ),
    ],
)
def test_an_invalid_raw_request_is_answered_with_the_reason_and_dead_lettered(
    chat: dict[str, Any], field: str, make_app: Any, sqs_client: Any
) -> None:
    app, calls = echo_app(make_app)

    request_url, _, dlq_url = urls(app)
    body = json.dumps({"ID": "bad-1", "TenantID": "acme", "Request": chat})
    with running_worker(app):
        sqs_client.send_message(QueueUrl=request_url, MessageBody=body)
        dead = receive(sqs_client, dlq_url)
        answer = app.get_result("bad-1", tenant_id="acme", timeout=5)

    assert [m["Body"] for m in dead] == [body]
    assert field in string_attributes(dead[0])[ATTR_REASON]
    assert calls.counts == {}
    assert answer.error is not None
    assert answer.error.retryable is False
    assert field in answer.error.message


def test_a_request_answered_once_is_not_handled_again_when_it_comes_back(
    make_app: Any, sqs_client: Any
) -> None:
    app, calls = echo_app(make_app)

    request_url, response_url, _ = urls(app)
    request = make_request("twice")
    with running_worker(app):
        app.send_request(request)
        first = app.get_result("twice", timeout=20)
        app.send_request(request)
        for _ in range(100):
            if depth(sqs_client, request_url) == 0:
                break
            threading.Event().wait(0.1)

    assert first.ok
    assert calls.counts == {"twice": 1}
    assert depth(sqs_client, request_url) == 0
    assert responses_for(sqs_client, response_url, "twice") == []


def test_a_handler_that_outlives_the_visibility_timeout_is_called_once(
    make_app: Any,
) -> None:
    app = make_app()
    calls = Calls()

    @app.handler
    def slow(request: AsyncRequest) -> ChatResponse:
        calls.add(request)
        threading.Event().wait(3.5)
        return reply(request, "slow but sure")

    with running_worker(app):
        handle = app.submit(CHAT, tenant_id="acme", request_id="slow-1")
        answer = handle.response(timeout=20)

    assert answer.ok
    assert answer.attempts == 1
    assert calls.counts == {"slow-1": 1}


def test_a_response_too_large_for_the_queue_is_answered_with_an_error(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    calls = Calls()

    @app.handler
    def verbose(request: AsyncRequest) -> ChatResponse:
        calls.add(request)
        return ChatResponse.from_text("x" * 1_100_000, model="verbose")

    _, _, dlq_url = urls(app)
    with running_worker(app):
        handle = app.submit(CHAT, tenant_id="acme", request_id="huge-1")
        answer = handle.response(timeout=20)
        dead = receive(sqs_client, dlq_url)

    assert answer.error is not None
    assert answer.error.code == "response_too_large"
    assert calls.counts == {"huge-1": 1}
    assert [json.loads(m["Body"])["id"] for m in dead] == ["huge-1"]
    with pytest.raises(RequestFailed) as failed:
        handle.get(timeout=1)
    assert failed.value.response.error.code == "response_too_large"


# -- receiving ----------------------------------------------------------------------


class CountingReceives(SQSBroker):
    """The real SQS broker, noting how many request-queue receives run at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.calls = 0

    def receive(self, queue_url: str, *args: Any, **kwargs: Any) -> list[Received]:
        if not queue_url.endswith("-requests"):
            return super().receive(queue_url, *args, **kwargs)
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().receive(queue_url, *args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def test_a_backlog_is_received_by_several_receives_at_once_within_the_slots(
    make_app: Any,
) -> None:
    app = make_app()
    broker = CountingReceives(app.settings)
    app._broker = broker
    calls = Calls()
    running = Counter[str]()
    lock = threading.Lock()

    @app.handler
    async def slow(request: AsyncRequest) -> ChatResponse:
        calls.add(request)
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        await asyncio.sleep(0.5)
        with lock:
            running["now"] -= 1
        return reply(request)

    handles = app.submit_many([CHAT] * 60, tenant_id="acme")
    with running_worker(app, concurrency=30, receivers=3):
        answers = [handle.get(timeout=60) for handle in handles]

    assert len(answers) == 60
    assert calls.counts == Counter({handle.id: 1 for handle in handles})
    assert 2 <= broker.most_at_once <= 3
    assert running["most"] <= 30


def test_an_idle_worker_keeps_one_receive_in_flight(make_app: Any) -> None:
    app = make_app()
    broker = CountingReceives(app.settings)
    app._broker = broker

    @app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        return reply(request)

    with running_worker(app, concurrency=50, receivers=5, wait_time_seconds=1):
        time.sleep(3.5)

    assert broker.calls >= 2
    assert broker.most_at_once == 1


def test_receivers_below_one_are_refused_naming_the_value(make_app: Any) -> None:
    with pytest.raises(ValueError, match="receivers=0 must be at least 1"):
        make_app().worker(receivers=0)


def test_a_message_delivered_again_while_it_runs_is_not_run_twice(
    make_app: Any, sqs_client: Any, caplog: Any
) -> None:
    caplog.set_level("INFO", logger="asyncllm._worker")
    app = make_app()
    request_url, response_url, dead_letter_url = urls(app)
    calls = Calls()

    @app.handler
    async def slow(request: AsyncRequest) -> ChatResponse:
        calls.add(request)
        # 1.5 visibility timeouts of 2 s: without a heartbeat, SQS hands the
        # message out again half way through.
        await asyncio.sleep(3)
        return reply(request)

    handle = app.submit(CHAT, tenant_id="acme")
    with running_worker(app, heartbeat=False, wait_time_seconds=0):
        answer = handle.get(timeout=30)
        time.sleep(2.5)  # past the next visibility timeout: nothing comes back

    assert answer.content == CHAT["messages"][0]["content"]
    assert calls.counts == Counter({handle.id: 1})
    assert "received again while running" in caplog.text
    assert depth(sqs_client, request_url) == 0
    assert depth(sqs_client, dead_letter_url) == 0
    assert responses_for(sqs_client, response_url, handle.id) == []  # collected


def test_receivers_go_on_polling_after_a_full_receive_and_an_idle_spell(
    make_app: Any,
) -> None:
    app, calls = echo_app(make_app)

    first = app.submit_many([CHAT] * 10, tenant_id="acme")
    with running_worker(app, concurrency=15, receivers=2, wait_time_seconds=1):
        app.wait(first, timeout=30)
        time.sleep(3)  # every receive comes back empty for a while
        later = app.submit_many([CHAT] * 2, tenant_id="acme")
        answers = app.wait(later, timeout=20)

    assert [answer.ok for answer in answers] == [True, True]
    assert set(calls.counts) == {handle.id for handle in [*first, *later]}


def test_a_message_the_dead_letter_queue_refuses_is_answered_once_and_redriven(
    app_settings: dict[str, Any], sqs_client: Any
) -> None:
    # A dead-letter queue whose size limit leaves no room for the copy.
    dlq_url = sqs_client.create_queue(
        QueueName=f"{app_settings['request_queue']}-dlq",
        Attributes={"MaximumMessageSize": "1024"},
    )["QueueUrl"]
    dlq_arn = sqs_client.get_queue_attributes(
        QueueUrl=dlq_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})
    request_url = sqs_client.create_queue(
        QueueName=app_settings["request_queue"],
        Attributes={"VisibilityTimeout": "2", "RedrivePolicy": policy},
    )["QueueUrl"]
    response_url = sqs_client.create_queue(QueueName=app_settings["response_queue"])[
        "QueueUrl"
    ]
    app = AsyncLLM("small-dlq", **app_settings)
    body = json.dumps(
        {
            "id": "too-big-to-copy",
            "tenant_id": "acme",
            "request": {"model": "m", "messages": [], "pad": "z" * 2000},
        }
    )

    @app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        return reply(request, "still here")

    with running_worker(app):
        sqs_client.send_message(QueueUrl=request_url, MessageBody=body)
        wait_for(lambda: depth(sqs_client, request_url) == 0, timeout=30)
        refusals = responses_for(sqs_client, response_url, "too-big-to-copy")
        good = app.submit(CHAT, tenant_id="acme")
        answer = good.get(timeout=20)
    app.close()

    assert answer.content == "still here"
    assert len(refusals) == 1
    assert "messages" in refusals[0]["error"]["message"]
    # The redrive policy moved it after its three receives, as SQS would.
    assert [m["Body"] for m in receive(sqs_client, dlq_url)] == [body]
