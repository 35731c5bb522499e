"""What is measured: one `Case` per system and setting, in the order run.

Each case names the worker command its users would run, the settings that
differ from the system's defaults, and how many requests may be outstanding.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

#: The fake provider's answer time in the LLM-shaped scenario.
PROVIDER_DELAY_SECONDS = 0.3
#: Outstanding requests in the no-op scenarios: keeps moto's queues shallow.
NOOP_WINDOW = 50
#: Outstanding requests in the LLM-shaped scenario: room for 100 calls in
#: flight. moto's intake keeps far fewer in flight (the provider's peak
#: concurrency shows how many), so a deeper window would only slow the
#: endpoint, for every system alike.
LLM_WINDOW = 110


@dataclass(frozen=True)
class Case:
    """One measured run: a system, its worker command and its settings.

    Attributes:
        scenario: ``throughput`` (no-op handler), ``llm`` or ``latency``.
        system: The submitter driver: boto3, asyncllm, celery or dramatiq.
        label: The row's name in the results.
        settings: The settings used, in words, for the results.
        worker: The worker command (after ``python``).
        env: Extra environment for the worker and the submitter.
        window: The most requests outstanding at once.
        concurrency: Calls the worker may run at once (0: not applicable).
    """

    scenario: str
    system: str
    label: str
    settings: str
    worker: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    window: int = NOOP_WINDOW
    concurrency: int = 0

    @property
    def key(self) -> str:
        """A short unique name, for files and queue prefixes."""
        name = self.label.lower()
        for char in " ,=().":
            name = name.replace(char, "-")
        return "-".join(part for part in name.split("-") if part)


def _asyncllm(app: str, concurrency: int) -> tuple[str, ...]:
    return (
        "-m",
        "asyncllm",
        "--log-level",
        "WARNING",
        "worker",
        "-A",
        f"benchmarks.apps.asyncllm_app:{app}",
        "--concurrency",
        str(concurrency),
        "--wait-time-seconds",
        "1",
    )


def _celery(pool: str, concurrency: int) -> tuple[str, ...]:
    return (
        "-m",
        "celery",
        "-A",
        "benchmarks.apps.celery_app",
        "worker",
        "--loglevel",
        "WARNING",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--queues",
        "{requests}",
    )


def _dramatiq(processes: int, threads: int) -> tuple[str, ...]:
    return (
        "-m",
        "dramatiq",
        "benchmarks.apps.dramatiq_app",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--queues",
        "requests",
    )


def throughput_cases() -> list[Case]:
    """The no-op scenario: the same four systems, shallow queues."""
    return [
        Case(
            "throughput",
            "boto3",
            "boto3 batch loop",
            "one process: ReceiveMessage 10 (1 s long poll), SendMessageBatch of "
            "answers, DeleteMessageBatch; submitter SendMessageBatch",
            ("-m", "benchmarks.apps.boto3_worker"),
        ),
        Case(
            "throughput",
            "asyncllm",
            "asyncllm",
            "asyncllm worker --concurrency 50 --wait-time-seconds 1, async "
            "handler, default SQLite ledger; submitter submit_many + collect",
            _asyncllm("noop_app", 50),
            concurrency=50,
        ),
        Case(
            "throughput",
            "celery",
            "Celery prefork",
            "celery worker --pool prefork --concurrency 2 (the default, one per "
            "core), task_acks_late, worker_prefetch_multiplier 64 (docs: many "
            "short tasks); submitter task.delay + kombu SimpleQueue",
            _celery("prefork", 2),
            env={"BENCH_CELERY_PREFETCH": "64"},
            concurrency=2,
        ),
        Case(
            "throughput",
            "dramatiq",
            "dramatiq-sqs",
            "dramatiq --processes 2 --threads 8 (the defaults), dramatiq-sqs "
            "defaults; submitter actor.send + broker consumer",
            _dramatiq(2, 8),
            concurrency=16,
        ),
    ]


def llm_cases() -> list[Case]:
    """The LLM-shaped scenario: each system at its concurrency, one window."""
    llm = {"BENCH_MODE": "llm"}
    cases = [
        Case(
            "llm",
            "asyncllm",
            f"asyncllm c={c}",
            f"asyncllm worker --concurrency {c}, async handler with one "
            f"httpx.AsyncClient (pool {c})",
            _asyncllm("llm_app", c),
            env={**llm, "BENCH_CONCURRENCY": str(c)},
            window=LLM_WINDOW,
            concurrency=c,
        )
        for c in (100, 500)
    ]
    for pool in ("threads", "prefork"):
        cases.append(
            Case(
                "llm",
                "celery",
                f"Celery {pool} c=100",
                f"celery worker --pool {pool} --concurrency 100, task_acks_late, "
                "worker_prefetch_multiplier 1 (docs: long tasks), httpx.Client "
                "per process",
                _celery(pool, 100),
                env={**llm, "BENCH_CONCURRENCY": "100", "BENCH_CELERY_PREFETCH": "1"},
                window=LLM_WINDOW,
                concurrency=100,
            )
        )
    cases.append(
        Case(
            "llm",
            "dramatiq",
            "dramatiq-sqs c=100",
            "dramatiq --processes 1 --threads 100, dramatiq-sqs defaults, "
            "httpx.Client per process",
            _dramatiq(1, 100),
            env={**llm, "BENCH_CONCURRENCY": "100"},
            window=LLM_WINDOW,
            concurrency=100,
        )
    )
    return cases


def latency_case() -> Case:
    """Submit → result at low load: one request at a time, asyncllm."""
    return Case(
        "latency",
        "asyncllm",
        "asyncllm latency",
        "one request at a time, 50 ms apart: app.submit then handle.get; "
        "worker --concurrency 10 --wait-time-seconds 1",
        _asyncllm("noop_app", 10),
        window=1,
        concurrency=10,
    )


def worker_command(case: Case, requests_queue: str) -> list[str]:
    """The full worker command of a case for this run's queue names."""
    return [sys.executable, *(a.format(requests=requests_queue) for a in case.worker)]
