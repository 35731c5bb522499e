"""A worker built for long LLM calls: concurrency, heartbeats, signals and crashes.

These tests run ``asyncllm worker`` processes (and one in-process worker) on a
real SQS endpoint (moto's server on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from asyncllm import AsyncLLM, AsyncRequest, ChatResponse, QueueOptions, Received
from asyncllm._wire import ATTR_FAILED_ATTEMPTS

from .conftest import running_worker, test_queue_options
from .process_apps import CALLS_ENV, SLEEP_ENV, count_calls, read_calls
from .support import string_attributes
from .worker_harness import (
    ResponseReader,
    files_containing,
    make_queues,
    new_request,
    queue_depth,
    send_requests,
    wait_until,
    worker_env,
    worker_process,
)

#: Long enough that a message a worker kept would visibly not come back in time.
LONG_VISIBILITY = QueueOptions(visibility_timeout=30, receive_wait_seconds=0)


def started_by(calls: Path, request_id: str) -> list[int]:
    """The pids that started a call for ``request_id``, in order."""
    return [
        pid
        for rid, event, pid, _ in read_calls(calls)
        if (rid, event) == (request_id, "start")
    ]


def test_five_hundred_one_second_calls_run_concurrently_in_one_worker(
    app_settings: dict[str, Any], sqs_client: Any, record_property: Any
) -> None:
    app, setup = make_queues(
        app_settings, QueueOptions(visibility_timeout=60, receive_wait_seconds=0)
    )

    running: list[int] = [0, 0]  # now, peak

    @app.handler
    async def one_second(request: AsyncRequest) -> ChatResponse:
        running[0] += 1
        running[1] = max(running)
        await asyncio.sleep(1.0)
        running[0] -= 1
        return ChatResponse.from_text("ok", model="sleepy")

    requests = [new_request() for _ in range(500)]
    reader = ResponseReader(sqs_client, setup.response_url)
    try:
        with running_worker(app, concurrency=500):
            began = time.monotonic()
            senders = [
                threading.Thread(
                    target=send_requests,
                    args=(sqs_client, setup.request_url, requests[i::5]),
                )
                for i in range(5)
            ]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join(60)
            reader.wait_for_ids([r.id for r in requests], timeout=110)
            elapsed = time.monotonic() - began
    finally:
        app.close()

    record_property("five_hundred_calls_seconds", round(elapsed, 1))
    print(f"\n500 one-second calls answered in {elapsed:.1f} s, peak {running[1]}")
    responses = reader.responses()
    assert Counter(len(responses[r.id]) for r in requests) == {1: 500}
    assert all(responses[r.id][0].ok for r in requests)
    # One at a time would take 500 s; moto's server, which needs about 0.5 s per
    # receive at this depth, is the bottleneck here, not the worker.
    assert elapsed < 120
    assert running[1] > 5


def test_a_call_three_times_the_visibility_timeout_runs_once_with_two_workers(
    app_settings: dict[str, Any], sqs_endpoint: str, sqs_client: Any, tmp_path: Path
) -> None:
    app, setup = make_queues(app_settings, test_queue_options())
    app.close()
    assert setup.visibility_timeout == 2
    calls = tmp_path / "calls.log"
    env = worker_env(
        sqs_endpoint, app_settings, tmp_path, **{CALLS_ENV: str(calls), SLEEP_ENV: "6"}
    )
    request = new_request()
    reader = ResponseReader(sqs_client, setup.response_url)

    # The second worker polls only once the first has the message: two
    # receivers racing for a fresh message can both get it from moto's server,
    # a duplicate of the server's making, not the worker's.
    with worker_process("a", env, tmp_path) as first:
        first.wait_ready()
        send_requests(sqs_client, setup.request_url, [request])
        wait_until(lambda: started_by(calls, request.id), 15, what="the call")
        with worker_process("b", env, tmp_path) as second:
            second.wait_ready()
            # Polling while the 6 s call runs, across two visibility timeouts.
            assert count_calls(calls, request.id, "end") == 0
            reader.wait_for_ids([request.id], timeout=25)
            # Past the point where a lost delete would show as a second call.
            reader.drain(seconds=1)
            assert queue_depth(sqs_client, setup.request_url) == 0
            first.signal(signal.SIGTERM)
            second.signal(signal.SIGTERM)
            assert (first.wait(timeout=10), second.wait(timeout=10)) == (0, 0)

    (response,) = reader.responses()[request.id]
    assert response.ok
    assert response.attempts == 1
    assert started_by(calls, request.id) == [first.pid]
    assert count_calls(calls, request.id, "end") == 1


def test_sigterm_lets_running_calls_finish_and_hands_new_messages_to_another_worker(
    app_settings: dict[str, Any], sqs_endpoint: str, sqs_client: Any, tmp_path: Path
) -> None:
    app, setup = make_queues(app_settings, LONG_VISIBILITY)
    app.close()
    calls = tmp_path / "calls.log"
    prompt = f"secret prompt {uuid.uuid4().hex}"
    env = worker_env(sqs_endpoint, app_settings, tmp_path, **{CALLS_ENV: str(calls)})
    running = [new_request(text=prompt) for _ in range(2)]
    late = new_request(text=prompt)
    reader = ResponseReader(sqs_client, setup.response_url)

    with worker_process(
        "a", {**env, SLEEP_ENV: "3"}, tmp_path, "--concurrency", "3"
    ) as first:
        first.wait_ready()
        send_requests(sqs_client, setup.request_url, running)
        wait_until(
            lambda: all(started_by(calls, r.id) for r in running), 15, what="calls"
        )
        first.signal(signal.SIGTERM)
        signalled = time.monotonic()
        send_requests(sqs_client, setup.request_url, [late])
        with worker_process("b", {**env, SLEEP_ENV: "0.2"}, tmp_path) as second:
            assert first.wait(timeout=15) == 0
            reader.wait_for_ids([r.id for r in [*running, late]], timeout=15)
            late_answered = time.monotonic() - signalled

    responses = reader.responses()
    for request in running:
        (answer,) = responses[request.id]
        assert answer.ok
        assert started_by(calls, request.id) == [first.pid]
        assert count_calls(calls, request.id, "end") == 1
    (late_answer,) = responses[late.id]
    assert late_answer.ok
    assert started_by(calls, late.id) == [second.pid]
    # The queue's visibility timeout is 30 s: a message the stopping worker had
    # received and kept would not be back this soon.
    assert late_answered < 20
    assert "Traceback" not in first.log()
    assert files_containing(first.temp_dir, prompt) == []
    assert files_containing(second.temp_dir, prompt) == []


@pytest.mark.parametrize("handler", ["slow", "slow_sync"])
def test_a_second_sigterm_releases_running_calls_for_another_worker_and_exits_0(
    handler: str,
    app_settings: dict[str, Any],
    sqs_endpoint: str,
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    app, setup = make_queues(app_settings, LONG_VISIBILITY)
    app.close()
    calls = tmp_path / "calls.log"
    prompt = f"secret prompt {uuid.uuid4().hex}"
    env = worker_env(sqs_endpoint, app_settings, tmp_path, **{CALLS_ENV: str(calls)})
    request = new_request(text=prompt, handler=handler)
    reader = ResponseReader(sqs_client, setup.response_url)

    with worker_process(
        "a", {**env, SLEEP_ENV: "60"}, tmp_path, "--concurrency", "1"
    ) as first:
        first.wait_ready()
        send_requests(sqs_client, setup.request_url, [request])
        wait_until(lambda: started_by(calls, request.id), 15, what="the call")
        first.signal(signal.SIGTERM)
        with pytest.raises(AssertionError, match="still running"):
            first.wait(timeout=1.0)
        first.signal(signal.SIGTERM)
        # Promptly, although the 60 s call (on a thread, for slow_sync) runs on.
        assert first.wait(timeout=10) == 0
        released = time.monotonic()
        with worker_process("b", {**env, SLEEP_ENV: "0.2"}, tmp_path) as second:
            reader.wait_for_ids([request.id], timeout=15)
            answered = time.monotonic() - released
            reader.drain(seconds=1)

    (answer,) = reader.responses()[request.id]
    assert answer.ok
    assert answer.attempts == 2
    assert started_by(calls, request.id) == [first.pid, second.pid]
    assert count_calls(calls, request.id, "end") == 1
    assert answered < 20  # the visibility timeout is 30 s
    assert "released at shutdown" in first.log()
    assert files_containing(first.temp_dir, prompt) == []


def test_a_worker_killed_during_a_call_has_the_request_answered_once_by_another(
    app_settings: dict[str, Any], sqs_endpoint: str, sqs_client: Any, tmp_path: Path
) -> None:
    app, setup = make_queues(app_settings, test_queue_options())
    app.close()
    calls = tmp_path / "calls.log"
    env = worker_env(sqs_endpoint, app_settings, tmp_path, **{CALLS_ENV: str(calls)})
    request = new_request()
    reader = ResponseReader(sqs_client, setup.response_url)

    with worker_process("a", {**env, SLEEP_ENV: "30"}, tmp_path) as first:
        first.wait_ready()
        send_requests(sqs_client, setup.request_url, [request])
        wait_until(lambda: started_by(calls, request.id), 15, what="the call")
        first.signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
    with worker_process("b", {**env, SLEEP_ENV: "0.2"}, tmp_path) as second:
        reader.wait_for_ids([request.id], timeout=20)
        # Long enough for a second delivery to show, were there one.
        reader.drain(seconds=2)
        assert queue_depth(sqs_client, setup.request_url) == 0

    (answer,) = reader.responses()[request.id]
    assert answer.ok
    assert answer.attempts == 2
    assert started_by(calls, request.id) == [first.pid, second.pid]
    assert count_calls(calls, request.id, "end") == 1
    starts = [when for rid, event, _, when in read_calls(calls) if rid == request.id]
    # Redelivered only once the visibility timeout (2 s) had run out.
    assert starts[-1] - starts[0] >= 1.5


class StopDuringReceive:
    """A broker wrapper that stops the worker while a receive is under way."""

    def __init__(self, app: AsyncLLM) -> None:
        self.inner = app.broker
        self.worker: Any = None
        self.received: list[Received] = []
        self.armed = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def receive(
        self, queue_url: str, max_messages: int, wait_seconds: float
    ) -> list[Received]:
        messages = self.inner.receive(queue_url, max_messages, wait_seconds)
        if messages and self.armed.is_set():
            self.armed.clear()
            self.received.extend(messages)
            self.worker.stop()
            wait_until(lambda: self.worker._stopping.is_set(), 5, 0.01, "stop")
        return messages


def test_messages_received_after_the_stop_signal_are_handed_back_unused_at_once(
    app_settings: dict[str, Any], sqs_client: Any, tmp_path: Path
) -> None:
    app, setup = make_queues(app_settings, LONG_VISIBILITY)
    calls: list[str] = []

    @app.handler
    async def record(request: AsyncRequest) -> ChatResponse:
        calls.append(request.id)
        return ChatResponse.from_text("ok", model="m")

    wrapper = StopDuringReceive(app)
    app._broker = wrapper  # type: ignore[assignment]
    requests = [new_request() for _ in range(3)]
    try:
        with running_worker(app, concurrency=5) as worker:
            wrapper.worker = worker
            wrapper.armed.set()
            send_requests(sqs_client, setup.request_url, requests)
            wait_until(lambda: not wrapper.armed.is_set(), 10, what="a receive")
    finally:
        app._broker = wrapper.inner
        app.close()

    assert wrapper.received
    assert calls == []
    # Back now, not after the 30 s visibility timeout, as fresh copies that
    # have used up no attempt: SQS counts their receives from zero again.
    reply = sqs_client.receive_message(
        QueueUrl=setup.request_url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=2,
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
        MessageAttributeNames=["All"],
    )
    again = {json.loads(m["Body"])["id"]: m for m in reply.get("Messages", [])}
    for message in wrapper.received:
        copy = again[json.loads(message.body)["id"]]
        assert copy["Body"] == message.body
        assert copy["MessageId"] != message.message_id
        assert copy["Attributes"]["ApproximateReceiveCount"] == "1"
        assert string_attributes(copy)[ATTR_FAILED_ATTEMPTS] == "0"
        assert (
            string_attributes(copy)["TenantID"] == json.loads(message.body)["tenant_id"]
        )
    # The received originals are gone: one message per request is left.
    assert queue_depth(sqs_client, setup.request_url) == len(requests)
