"""Batched SQS calls in the worker: partial failures, no loss, no doubles, no wait."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from asyncllm import AsyncLLM, AsyncRequest, ChatResponse, MemoryBroker
from asyncllm._batching import Batcher
from asyncllm._broker import MessageGone, Outgoing, SQSBroker
from asyncllm._errors import TransportError

from .conftest import CHAT, running_worker, test_queue_options
from .support import Calls


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
    calls = Calls()

    @app.handler
    async def echo(request: AsyncRequest) -> ChatResponse:
        calls.add(request)
        return ChatResponse.from_text("ok", model="echo")

    return app, broker, calls.counts


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


class RecordingSQSBroker(SQSBroker):
    """The real SQS broker, noting how many visibility changes each call carries."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.batch_sizes: list[int] = []
        self.single_calls = 0

    def change_visibility(self, queue_url: str, receipt: str, seconds: int) -> None:
        with self.lock:
            self.single_calls += 1
        super().change_visibility(queue_url, receipt, seconds)

    def change_visibility_batch(
        self, queue_url: str, receipts: Sequence[str], seconds: int
    ) -> dict[str, TransportError]:
        with self.lock:
            self.batch_sizes.append(len(receipts))
        return super().change_visibility_batch(queue_url, receipts, seconds)


def test_heartbeats_of_requests_received_together_share_batch_calls(
    make_app: Any,
) -> None:
    app = make_app()
    broker = RecordingSQSBroker(app.settings)
    app._broker = broker
    calls = Calls()

    @app.handler
    async def slow(request: AsyncRequest) -> ChatResponse:
        calls.add(request)
        # Two and a half visibility timeouts of 2 s: needs several heartbeats.
        await asyncio.sleep(5)
        return ChatResponse.from_text("ok", model="slow")

    handles = app.submit_many([CHAT] * 10, tenant_id="acme")
    with running_worker(app, concurrency=10, batch_delay=0.05):
        answers = [handle.get(timeout=60) for handle in handles]

    assert [answer.content for answer in answers] == ["ok"] * 10
    assert calls.counts == Counter({handle.id: 1 for handle in handles})
    assert broker.single_calls == 0
    assert sum(broker.batch_sizes) >= 20  # at least two beats per request
    assert max(broker.batch_sizes) > 1


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_an_entry_that_fails_for_good_is_failed_at_once_and_the_rest_land() -> None:
    tries: list[list[str]] = []
    gone = MessageGone("receipt handle expired")

    async def flush(entries: Sequence[str]) -> dict[int, Exception]:
        tries.append(list(entries))
        return {i: gone for i, entry in enumerate(entries) if entry == "expired"}

    async def scenario() -> list[Any]:
        batcher: Batcher[str] = Batcher(flush, "test", final=(MessageGone,))
        puts = [batcher.put(entry) for entry in ("a", "expired", "b")]
        return await asyncio.gather(*puts, return_exceptions=True)

    outcomes = run(scenario())

    assert outcomes == [None, gone, None]
    assert tries == [["a", "expired", "b"]]


def test_an_entry_that_fails_for_a_while_is_retried_alone_until_it_lands() -> None:
    tries: list[list[str]] = []

    async def flush(entries: Sequence[str]) -> dict[int, Exception]:
        tries.append(list(entries))
        if len(tries) < 3:
            return {entries.index("flaky"): TransportError("throttled")}
        return {}

    async def scenario() -> None:
        batcher: Batcher[str] = Batcher(flush, "test", max_delay=0.01)
        await asyncio.gather(batcher.put("a"), batcher.put("flaky"))

    run(scenario())

    assert tries == [["a", "flaky"], ["flaky"], ["flaky"]]


def test_an_entry_that_keeps_failing_raises_its_last_error_in_its_caller() -> None:
    async def flush(entries: Sequence[str]) -> dict[int, Exception]:
        return {0: TransportError(f"refused {entries[0]}")}

    async def scenario() -> None:
        batcher: Batcher[str] = Batcher(flush, "test", retries=1, max_delay=0.01)
        await batcher.put("doomed")

    with pytest.raises(TransportError, match="refused doomed"):
        run(scenario())
