"""The submitting side of a run, one process, written with each system's own API.

It keeps at most ``--window`` requests outstanding (submitted, not yet
answered), so no queue ever holds more than that many messages: moto's cost
per call grows with queue depth, and a shallow queue keeps the endpoint from
hiding the clients' differences. It submits in chunks of up to ten, reads
answers from the response queue as they come, and stops when every request is
answered or the time limit is up.

Before the measured phase a warm-up round checks that the worker answers and
lets every process finish its imports and connections. The measured phase
records wall time, this process's CPU time, the worker process tree's CPU time,
the SQS calls the endpoint answered and, for LLM-shaped runs, the provider's
counters. The result goes to ``--out`` as JSON.

Run by `benchmarks.run`; by hand::

    python -m benchmarks.submit --system asyncllm --requests 300 --window 50 \\
        --worker-pid PID --out result.json
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import json
import os
import statistics
import time
import urllib.request
import uuid
from collections.abc import Collection, Iterator
from typing import Any

from benchmarks._env import HOST, make_safe
from benchmarks._procs import tree_cpu_seconds
from benchmarks.apps import common


class Driver(abc.ABC):
    """Submits requests and reads answers with one system's client API."""

    @abc.abstractmethod
    def submit(self, count: int) -> list[str]:
        """Submit ``count`` requests; returns their ids."""

    @abc.abstractmethod
    def poll(self, outstanding: Collection[str]) -> list[str]:
        """Wait up to about a second for answers; returns the ids answered."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


class Boto3Driver(Driver):
    """Bare boto3: SendMessageBatch, ReceiveMessage of 10, DeleteMessageBatch."""

    def __init__(self) -> None:
        import boto3

        self.sqs = boto3.client(
            "sqs", endpoint_url=common.endpoint_url(), region_name=common.REGION
        )
        requests_name, responses_name = common.queue_names()
        self.requests_url = self.sqs.get_queue_url(QueueName=requests_name)["QueueUrl"]
        self.responses_url = self.sqs.get_queue_url(QueueName=responses_name)[
            "QueueUrl"
        ]

    def submit(self, count: int) -> list[str]:
        """SendMessageBatch, ten requests a call."""
        ids = [str(uuid.uuid4()) for _ in range(count)]
        for start in range(0, count, 10):
            entries = [
                {
                    "Id": str(index),
                    "MessageBody": json.dumps({"id": rid, **common.CHAT_REQUEST}),
                }
                for index, rid in enumerate(ids[start : start + 10])
            ]
            self.sqs.send_message_batch(QueueUrl=self.requests_url, Entries=entries)
        return ids

    def poll(self, outstanding: Collection[str]) -> list[str]:
        """ReceiveMessage of up to ten (1 s long poll), then one DeleteMessageBatch."""
        reply = self.sqs.receive_message(
            QueueUrl=self.responses_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        messages = reply.get("Messages", [])
        if not messages:
            return []
        entries = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(messages)
        ]
        self.sqs.delete_message_batch(QueueUrl=self.responses_url, Entries=entries)
        return [json.loads(message["Body"])["id"] for message in messages]


class AsyncLLMDriver(Driver):
    """asyncllm: ``submit_many`` and the collector, as its README shows."""

    def __init__(self) -> None:
        from asyncllm import AsyncLLM

        self.app = AsyncLLM("bench-submitter")

    def submit(self, count: int) -> list[str]:
        """``app.submit_many``: validated, then SendMessageBatch."""
        handles = self.app.submit_many([common.CHAT_REQUEST] * count)
        return [handle.id for handle in handles]

    def poll(self, outstanding: Collection[str]) -> list[str]:
        """``app.collect`` into the result store, then look the ids up there."""
        if not self.app.collect(wait_seconds=1):
            return []
        answered = []
        for request_id in outstanding:
            record = self.app.results.get(request_id)
            if record is not None and record.response is not None:
                answered.append(request_id)
        return answered

    def latency(self) -> float:
        """Submit one request and wait for its answer; returns the seconds."""
        started = time.perf_counter()
        handle = self.app.submit(common.CHAT_REQUEST)
        handle.get(timeout=30)
        return time.perf_counter() - started

    def close(self) -> None:
        """Close the app's broker and stores."""
        self.app.close()


class CeleryDriver(Driver):
    """Celery: ``task.delay`` to submit; kombu's SimpleQueue reads the answers.

    The reader's connection long-polls 1 s (``wait_time_seconds``), like the
    other systems' readers; the rest of the transport options are the app's.
    """

    def __init__(self) -> None:
        from kombu import Connection

        from benchmarks.apps import celery_app

        self.tasks = celery_app
        options = {**celery_app.TRANSPORT_OPTIONS, "wait_time_seconds": 1}
        self.connection = Connection(celery_app.BROKER_URL, transport_options=options)
        self.queue = self.connection.SimpleQueue(celery_app.RESPONSES)

    def submit(self, count: int) -> list[str]:
        """``task.delay`` for each request: one SendMessage each."""
        ids = [str(uuid.uuid4()) for _ in range(count)]
        for rid in ids:
            self.tasks.handle.delay(rid, common.CHAT_REQUEST)
        return ids

    def poll(self, outstanding: Collection[str]) -> list[str]:
        """One answer from the SimpleQueue (its buffer, or a receive), acked."""
        try:
            message = self.queue.get(block=True, timeout=1)
        except self.queue.Empty:
            return []
        args = message.decode()[0]
        message.ack()
        return [args[0]]

    def close(self) -> None:
        """Close the reader and release the connection."""
        self.queue.close()
        self.connection.release()


class DramatiqDriver(Driver):
    """dramatiq: ``actor.send`` to submit; the broker's consumer reads answers."""

    def __init__(self) -> None:
        from benchmarks.apps import dramatiq_app

        self.actors = dramatiq_app
        self.consumer = dramatiq_app.broker.consume(
            "responses", prefetch=10, timeout=1000
        )

    def submit(self, count: int) -> list[str]:
        """``actor.send`` for each request: one SendMessage each."""
        ids = [str(uuid.uuid4()) for _ in range(count)]
        for rid in ids:
            self.actors.handle.send(rid, common.CHAT_REQUEST)
        return ids

    def poll(self, outstanding: Collection[str]) -> list[str]:
        """One answer from the broker's consumer, acked."""
        message = next(self.consumer)
        if message is None:
            return []
        request_id = message.args[0]
        self.consumer.ack(message)
        return [request_id]

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()


DRIVERS: dict[str, type[Driver]] = {
    "boto3": Boto3Driver,
    "asyncllm": AsyncLLMDriver,
    "celery": CeleryDriver,
    "dramatiq": DramatiqDriver,
}


class Window:
    """The outstanding requests of a run and when each was submitted."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.latencies: dict[str, float] = {}
        self.outstanding: set[str] = set()
        self.duplicates = 0
        self.strays = 0
        self.stalled = False

    def submitted(self, ids: list[str]) -> None:
        """Note requests as submitted now."""
        now = time.perf_counter()
        for request_id in ids:
            self.sent[request_id] = now
            self.outstanding.add(request_id)

    def answered(self, ids: list[str]) -> None:
        """Note answers read now; repeats and unknown ids are counted apart."""
        now = time.perf_counter()
        for request_id in ids:
            if request_id in self.latencies:
                self.duplicates += 1
            elif request_id not in self.sent:
                self.strays += 1
            else:
                self.latencies[request_id] = now - self.sent[request_id]
                self.outstanding.discard(request_id)


#: A run that gets no answer for this long has stalled and is given up.
STALL_SECONDS = 60.0


def run_window(driver: Driver, requests: int, window: int, seconds: float) -> Window:
    """Submit ``requests`` with at most ``window`` outstanding; read the answers.

    Bounded by ``seconds``, and given up when no answer comes for
    `STALL_SECONDS`; the returned window tells how many were answered.
    """
    state = Window()
    deadline = time.monotonic() + seconds
    last_answer = time.monotonic()
    while len(state.latencies) < requests and time.monotonic() < deadline:
        left = requests - len(state.sent)
        room = min(left, window - len(state.outstanding))
        if left and room >= min(10, left):
            state.submitted(driver.submit(room))
        answered = driver.poll(state.outstanding)
        state.answered(answered)
        if answered:
            last_answer = time.monotonic()
        elif time.monotonic() - last_answer > STALL_SECONDS:
            state.stalled = True
            break
    return state


def endpoint_calls(port: int) -> dict[str, int]:
    """The SQS calls the endpoint answered so far, by action."""
    url = f"http://{HOST}:{port}/_bench/calls"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return dict(json.load(reply))


def provider_stats(reset: bool = False) -> dict[str, int]:
    """The fake provider's counters (optionally zeroing them first)."""
    url = f"{common.provider_url()}/stats" + ("/reset" if reset else "")
    request = urllib.request.Request(url, method="POST" if reset else "GET")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return dict(json.load(reply))


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy since boot."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    user, nice, system, _, _, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _servers_cpu(pids: list[int]) -> float:
    return sum(tree_cpu_seconds(pid) for pid in pids)


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def measure(driver: Driver, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then run the measured phase; returns its numbers."""
    warm = run_window(driver, args.warmup, args.warmup, args.warmup_seconds)
    if len(warm.latencies) < args.warmup:
        message = f"warm-up: only {len(warm.latencies)} of {args.warmup} answered"
        raise RuntimeError(message)
    llm = common.mode() == "llm"
    if llm:
        provider_stats(reset=True)
    calls_before = endpoint_calls(args.sqs_port)
    servers_before = _servers_cpu(args.server_pid)
    busy_before = machine_busy_seconds()
    worker_before = tree_cpu_seconds(args.worker_pid)
    cpu_before = time.process_time()
    started = time.perf_counter()
    if args.latency:
        state = _run_latency(driver, args)
    else:
        state = run_window(driver, args.requests, args.window, args.timeout_seconds)
    wall = time.perf_counter() - started
    submitter_cpu = time.process_time() - cpu_before
    worker_cpu = tree_cpu_seconds(args.worker_pid) - worker_before
    servers_cpu = _servers_cpu(args.server_pid) - servers_before
    busy = machine_busy_seconds() - busy_before
    result = {
        "requests": args.requests,
        "answered": len(state.latencies),
        "duplicates": state.duplicates,
        "strays": state.strays,
        "wall_seconds": wall,
        "submitter_cpu_seconds": submitter_cpu,
        "worker_cpu_seconds": worker_cpu,
        "servers_cpu_seconds": servers_cpu,
        # Everything else the machine ran meanwhile: a disturbed run shows here.
        "other_cpu_seconds": max(0.0, busy - submitter_cpu - worker_cpu - servers_cpu),
        "sqs_calls": _delta(endpoint_calls(args.sqs_port), calls_before),
    }
    if state.stalled:
        result["error"] = f"stalled: no answer for {STALL_SECONDS:g} s"
    elif len(state.latencies) < args.requests:
        result["error"] = f"ran over {args.timeout_seconds:g} s"
    latencies = list(state.latencies.values())
    if latencies:
        result["latency_p50"] = _percentile(latencies, 0.50)
        result["latency_p99"] = _percentile(latencies, 0.99)
        result["latency_mean"] = statistics.fmean(latencies)
    if llm:
        result["provider"] = provider_stats()
    return result


def _run_latency(driver: Driver, args: argparse.Namespace) -> Window:
    """One request at a time, ``--gap-seconds`` apart: submit → answer."""
    if not isinstance(driver, AsyncLLMDriver):
        raise SystemExit("--latency is measured for asyncllm only")
    state = Window()
    deadline = time.monotonic() + args.timeout_seconds
    for index in _bounded(args.requests, deadline):
        request_id = f"latency-{index}"
        state.sent[request_id] = 0.0
        state.latencies[request_id] = driver.latency()
        time.sleep(args.gap_seconds)
    return state


def _bounded(count: int, deadline: float) -> Iterator[int]:
    for index in range(count):
        if time.monotonic() >= deadline:
            return
        yield index


def main(argv: list[str] | None = None) -> None:
    """Run one measured phase and write its numbers to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(DRIVERS), required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--warmup-seconds", type=float, default=120.0)
    parser.add_argument("--timeout-seconds", type=float, default=600.0)
    parser.add_argument("--worker-pid", type=int, required=True)
    parser.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="a server process (SQS endpoint, provider) whose CPU to count apart",
    )
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--gap-seconds", type=float, default=0.05)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    args.sqs_port = common.sqs_port()
    make_safe()

    try:
        result = _measure_with(DRIVERS[args.system], args)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    with open(args.out, "w") as out:
        json.dump(result, out, indent=2)


def _measure_with(
    driver_class: type[Driver], args: argparse.Namespace
) -> dict[str, Any]:
    driver = driver_class()
    try:
        return measure(driver, args)
    finally:
        with contextlib.suppress(Exception):
            driver.close()


if __name__ == "__main__":
    main()
