"""Batched SQS calls in the worker: partial failures, no loss, no doubles, no wait."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from asyncllm import AsyncLLM, AsyncRequest, ChatResponse, MemoryBroker
from asyncllm._broker import Outgoing

from .conftest import CHAT, running_worker, test_queue_options


class FlakyBroker(MemoryBroker):
    """A memory broker whose batch calls drop entries at random, as SQS may."""

    def __init__(self, failure_rate: float, seed: int) -> None:
        super().__init__()
        self.failure_rate = failure_rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.injected = Counter[str]()

    def _fails(self, kind: str) -> bool:
        with self.lock:
            failed = self.random.random() < self.failure_rate
            self.injected[kind] += failed
            return failed

    def send_batch(self, queue_url: str, entries: Sequence[Outgoing]) -> list[str]:
        failed = [entry.id for entry in entries if self._fails("send")]
        sent = [entry for entry in entries if entry.id not in failed]
        super().send_batch(queue_url, sent)
        return failed

    def delete_batch(self, queue_url: str, receipts: Sequence[str]) -> list[str]:
        failed = [receipt for receipt in receipts if self._fails("delete")]
        super().delete_batch(queue_url, [r for r in receipts if r not in failed])
        return failed


def flaky_app(failure_rate: float) -> tuple[AsyncLLM, FlakyBroker, Counter[str]]:
    MemoryBroker.reset()
    app = AsyncLLM(
        "batching",
        broker_url="memory://",
        result_store="memory://",
        wait_time_seconds=0,
    )
    broker = FlakyBroker(failure_rate, seed=7)
    app._broker = broker
    app.create_queues(test_queue_options())
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    @app.handler
    async def echo(request: AsyncRequest) -> ChatResponse:
        with lock:
            calls[request.id] += 1
        return ChatResponse.from_text("ok", model="echo")

    return app, broker, calls


def response_ids(broker: MemoryBroker, queue: str) -> Counter[str]:
    return Counter(json.loads(m["body"])["request_id"] for m in broker.messages(queue))


def wait_for(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_thousand_requests_with_failing_batch_entries_are_answered_once_each(
    caplog: Any,
) -> None:
    caplog.set_level("WARNING", logger="asyncllm._batching")
    app, broker, calls = flaky_app(failure_rate=0.0)
    handles = app.submit_many([CHAT] * 1000, tenant_id="acme")
    ids = {handle.id for handle in handles}
    broker.failure_rate = 0.15

    with running_worker(app, concurrency=100):
        answered = wait_for(
            lambda: set(response_ids(broker, "asyncllm-responses")) >= ids, 120
        )
        # Deletes that failed bring messages back after the visibility
        # timeout; wait for those redeliveries to be settled too.
        settled = wait_for(
            lambda: (
                not broker.messages("asyncllm-requests")
                and not broker._queues["asyncllm-requests"].in_flight
            ),
            60,
        )

    responses = response_ids(broker, "asyncllm-responses")
    assert answered
    assert settled
    assert broker.injected["send"] > 0
    assert broker.injected["delete"] > 0
    assert set(responses) == ids
    assert max(responses.values()) == 1
    # A response whose send failed in every try is never published; its
    # request comes back and runs again. Nothing else runs twice.
    lost_sends = sum(
        record.args[1]  # type: ignore[index]
        for record in caplog.records
        if record.name == "asyncllm._batching"
        and record.getMessage().startswith("SendMessageBatch")
    )
    assert set(calls) == ids
    assert sum(calls.values()) == len(ids) + lost_sends
    assert not broker.messages("asyncllm-requests-dlq")
    app.close()
    MemoryBroker.reset()


def test_a_lone_request_is_answered_without_waiting_for_a_batch_to_fill(
    make_app: Any,
) -> None:
    app = make_app()

    @app.handler
    def echo(request: AsyncRequest) -> ChatResponse:
        return ChatResponse.from_text("ok", model="echo")

    with running_worker(app, batch_delay=0.02):
        begun = time.monotonic()
        handle = app.submit(CHAT, tenant_id="acme")
        handle.get(timeout=30)
        elapsed = time.monotonic() - begun

    # One receive (long poll of 1 s at most), one handler call, one batch of
    # one: far below the 30 s a batch that waited to fill would take.
    assert elapsed < 5
