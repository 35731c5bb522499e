"""Worker metrics over HTTP (Prometheus) and structured JSON logs."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncllm import AsyncLLM, AsyncRequest, ChatResponse, TerminalError
from asyncllm._logging import configure_logging
from asyncllm._metrics import PrometheusMetrics

from .conftest import running_worker
from .support import wait_for

AppFactory = Callable[..., AsyncLLM]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

PROMPT = "Summarise the merger memo for Halvorsen Shipping before Friday."
ANSWER = "The merger closes on the ninth; Halvorsen keeps its fleet."


def chat(text: str = PROMPT) -> dict[str, Any]:
    return {"model": "test", "messages": [{"role": "user", "content": text}]}


def register_handlers(app: AsyncLLM) -> Counter[str]:
    """Handlers that succeed, fail once, and refuse; returns calls per request id."""
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def count(request: AsyncRequest) -> int:
        with lock:
            calls[request.id] += 1
            return calls[request.id]

    @app.handler(default=True)
    def answer(request: AsyncRequest) -> ChatResponse:
        count(request)
        return ChatResponse.from_text(ANSWER, model="test")

    @app.handler(name="flaky")
    def flaky(request: AsyncRequest) -> ChatResponse:
        if count(request) == 1:
            raise ConnectionError("connection reset by the provider")
        return ChatResponse.from_text(ANSWER, model="test")

    @app.handler(name="refuse")
    def refuse(request: AsyncRequest) -> ChatResponse:
        count(request)
        raise TerminalError("refused by policy", code="policy")

    return calls


# -- metrics -------------------------------------------------------------------------


def scrape(port: int) -> Samples:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_until(port: int, check: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``check`` holds: the worker counts just after it settles."""
    found: list[Samples] = []

    def ready() -> bool:
        found.append(scrape(port))
        return check(found[-1])

    wait_for(ready)
    return found[-1]


@pytest.fixture
def metrics() -> Iterator[PrometheusMetrics]:
    """Metrics for the three handlers; two tenants get a label of their own."""
    served = PrometheusMetrics(["answer", "flaky", "refuse"], max_tenants=2)
    yield served
    served.close()


def test_the_metrics_endpoint_counts_successes_retries_and_dead_letters(
    make_app: AppFactory, metrics: PrometheusMetrics
) -> None:
    app = make_app()
    register_handlers(app)
    port = metrics.serve(0)
    succeeded = "asyncllm_requests_succeeded_total"
    retried = "asyncllm_requests_retried_total"
    dead = "asyncllm_requests_dead_lettered_total"

    with running_worker(app, metrics=metrics):
        before = scrape(port)
        first = [
            app.submit(chat(), tenant_id="acme"),
            app.submit(chat(), tenant_id="globex", handler="flaky"),
            app.submit(chat(), tenant_id="acme", handler="refuse"),
        ]
        app.wait(first, timeout=30)
        middle = scrape_until(
            port,
            lambda s: (
                value(s, succeeded, handler="flaky", tenant="globex") == 1
                and value(s, dead, handler="refuse", tenant="acme") == 1
            ),
        )
        later = [
            app.submit(chat(), tenant_id="initech"),
            app.submit(chat(), tenant_id="umbrella", handler="flaky"),
        ]
        app.wait(later, timeout=30)
        after = scrape_until(
            port, lambda s: value(s, succeeded, handler="flaky", tenant="other") == 1
        )

    assert value(before, succeeded, handler="answer", tenant="acme") == 0
    assert value(middle, succeeded, handler="answer", tenant="acme") == 1
    assert value(middle, succeeded, handler="flaky", tenant="globex") == 1
    assert value(middle, retried, handler="flaky", tenant="globex") == 1
    assert value(middle, retried, handler="answer", tenant="acme") == 0
    assert value(middle, dead, handler="refuse", tenant="acme") == 1
    assert value(middle, succeeded, handler="refuse", tenant="acme") == 0
    received = "asyncllm_requests_received_total"
    assert value(middle, received, handler="flaky", tenant="globex") == 2
    assert value(after, succeeded, handler="answer", tenant="other") == 1
    assert value(after, retried, handler="flaky", tenant="other") == 1
    assert value(after, dead, handler="refuse", tenant="acme") == 1
    tenants = {
        dict(labels).get("tenant")
        for (_, labels) in after
        if dict(labels).get("tenant") is not None
    }
    assert tenants == {"acme", "globex", "other"}
    durations = "asyncllm_handler_duration_seconds_count"
    assert value(after, durations, handler="flaky") == 4
    assert value(after, "asyncllm_queue_dwell_seconds_count", handler="answer") == 2
    assert value(after, "asyncllm_in_flight") == 0


# -- logs ----------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[Callable[[str], io.StringIO]]:
    """Configure JSON logs as the CLI does, into a buffer; the root logger is restored.

    The buffer stands in for standard error when `configure_logging` runs (pytest
    swaps ``sys.stderr`` between phases, so this happens inside the test).
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def configure(level_name: str) -> io.StringIO:
        stream = io.StringIO()
        with contextlib.redirect_stderr(stream):
            configure_logging(level_name, "json")
        return stream

    yield configure
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    assert lines
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


def run_three_requests(app: AsyncLLM, **worker_options: Any) -> list[str]:
    """Run a success, a retried success and a refusal; returns their ids."""
    register_handlers(app)
    with running_worker(app, **worker_options):
        handles = [
            app.submit(chat(), tenant_id="acme"),
            app.submit(chat(), tenant_id="globex", handler="flaky"),
            app.submit(chat(), tenant_id="initech", handler="refuse"),
        ]
        answers = app.wait(handles, timeout=30)
    assert [answer.ok for answer in answers] == [True, True, False]
    return [handle.id for handle in handles]


def test_json_logs_parse_line_by_line_carry_ids_and_never_the_prompt_at_info(
    make_app: AppFactory, json_logs: Callable[[str], io.StringIO]
) -> None:
    log_stream = json_logs("INFO")
    app = make_app()

    ids = run_three_requests(app)

    entries = json_lines(log_stream)
    tenants = dict(zip(ids, ["acme", "globex", "initech"], strict=True))
    about: dict[str, list[dict[str, Any]]] = {request_id: [] for request_id in ids}
    for entry in entries:
        assert {"asctime", "level", "logger", "message"} <= set(entry)
        for request_id in ids:
            if request_id in entry["message"]:
                about[request_id].append(entry)
    for request_id, lines in about.items():
        assert lines, f"no log line about {request_id}"
        for entry in lines:
            assert entry.get("request_id") == request_id, entry
            assert entry.get("tenant_id") == tenants[request_id], entry
            if entry["logger"] == "asyncllm._worker":
                assert isinstance(entry.get("attempt"), int), entry
    worker_lines = [e for e in entries if e["logger"] == "asyncllm._worker"]
    assert any("failed attempt 1" in e["message"] for e in worker_lines)
    assert any("failed terminally" in e["message"] for e in worker_lines)
    text = log_stream.getvalue()
    assert PROMPT not in text
    assert "Halvorsen" not in text
    assert ANSWER not in text


def test_worker_log_lines_name_the_handler_that_ran(
    make_app: AppFactory, json_logs: Callable[[str], io.StringIO]
) -> None:
    log_stream = json_logs("INFO")
    app = make_app()

    ids = run_three_requests(app)

    handlers = dict(zip(ids, ["answer", "flaky", "refuse"], strict=True))
    worker_lines = [
        entry
        for entry in json_lines(log_stream)
        if entry["logger"] == "asyncllm._worker" and entry.get("request_id") in ids
    ]
    assert worker_lines
    for entry in worker_lines:
        assert entry.get("handler") == handlers[entry["request_id"]], entry


@pytest.mark.parametrize("log_payloads", [False, True])
def test_at_debug_bodies_are_logged_only_when_log_payloads_allows_it(
    make_app: AppFactory,
    json_logs: Callable[[str], io.StringIO],
    log_payloads: bool,
) -> None:
    log_stream = json_logs("DEBUG")
    app = make_app()

    ids = run_three_requests(app, log_payloads=log_payloads)

    ours = [
        entry
        for entry in json_lines(log_stream)
        if entry["logger"].startswith("asyncllm")
    ]
    with_prompt = [entry for entry in ours if PROMPT in json.dumps(entry)]
    with_answer = [entry for entry in ours if ANSWER in json.dumps(entry)]
    if log_payloads:
        assert {entry.get("request_id") for entry in with_prompt} == set(ids)
        assert all(entry["level"] == "DEBUG" for entry in with_prompt + with_answer)
        assert {entry.get("request_id") for entry in with_answer} == set(ids[:2])
    else:
        assert with_prompt == []
        assert with_answer == []


def test_error_texts_that_quote_the_prompt_reach_the_response_but_not_info_logs(
    make_app: AppFactory, json_logs: Callable[[str], io.StringIO]
) -> None:
    log_stream = json_logs("INFO")
    app = make_app()

    @app.handler(name="echoes-prompt")
    def echoes_prompt(request: AsyncRequest) -> ChatResponse:
        raise ValueError(f"provider choked on: {request.request.messages[-1].content}")

    @app.handler(name="refuses-quoting")
    def refuses_quoting(request: AsyncRequest) -> ChatResponse:
        raise TerminalError(
            f"content filter hit: {request.request.messages[-1].content}"
        )

    handles = [
        app.submit(chat(), tenant_id="acme", handler="echoes-prompt"),
        app.submit(chat(), tenant_id="acme", handler="refuses-quoting"),
    ]
    with running_worker(app):
        answers = app.wait(handles, timeout=60)

    assert [answer.error.type for answer in answers if answer.error] == [
        "ValueError",
        "TerminalError",
    ]
    assert all(
        PROMPT in (answer.error.message if answer.error else "") for answer in answers
    )
    text = log_stream.getvalue()
    assert "giving up" in text
    assert "failed terminally" in text
    assert "Halvorsen" not in text
