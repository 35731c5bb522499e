"""Operating the queues: status, dead-letter list and redrive, purge (moto's server)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner, Result

from asyncllm import AsyncLLM, AsyncRequest, ChatResponse, Status, TerminalError
from asyncllm import encode as encode_message
from asyncllm._wire import ATTR_FAILED_ATTEMPTS, ATTR_RATE_LIMITS, ATTR_REASON

from .conftest import running_worker
from .support import (
    depth,
    invoke,
    peek,
    string_attributes,
    wait_for,
)

AppFactory = Callable[..., AsyncLLM]

PROMPT = "Draft a reply to the complaint about order 5521 from Ms Okafor."
GATE_SHUT = "the gate is shut"
RATE_REASON = "failed 3 attempts: RateLimitError"


def counts(sqs_client: Any, queue_url: str) -> tuple[int, int]:
    """Return a queue's (visible, in flight) message counts."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    reply = sqs_client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)
    values = reply["Attributes"]
    return int(values[names[0]]), int(values[names[1]])


def request_body(request_id: str, tenant: str) -> str:
    chat = {"model": "test", "messages": [{"role": "user", "content": PROMPT}]}
    fields = {"id": request_id, "tenant_id": tenant, "request": chat}
    request = AsyncRequest.model_validate(fields)
    return encode_message(request)


# -- queues status -------------------------------------------------------------------


def test_queues_status_counts_visible_and_in_flight_messages_and_warns(
    runner: CliRunner, env: dict[str, str], make_app: AppFactory, sqs_client: Any
) -> None:
    app = make_app()
    setup = app.check_queues()
    chat = {"model": "test", "messages": [{"role": "user", "content": "hi"}]}
    app.submit_many([chat, chat, chat])
    sqs_client.receive_message(QueueUrl=setup.request_url, VisibilityTimeout=60)
    sqs_client.send_message(
        QueueUrl=setup.dead_letter_url, MessageBody=request_body("r-dead", "acme")
    )

    table = invoke(runner, env, "queues", "status")
    as_json = invoke(runner, env, "queues", "status", "--json")

    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()}
    assert rows["requests"][1:3] == ["2", "1"]
    assert rows["dead"][2:4] == ["1", "0"]
    assert rows["responses"][1:3] == ["0", "0"]
    assert "warning: requests: visibility timeout 2 s is short" in table.stdout
    assert as_json.exit_code == 0, as_json.output
    by_role = {row["role"]: row for row in json.loads(as_json.stdout)}
    assert (by_role["requests"]["visible"], by_role["requests"]["in_flight"]) == (2, 1)
    assert (
        by_role["dead letters"]["visible"],
        by_role["dead letters"]["in_flight"],
    ) == (
        1,
        0,
    )
    assert by_role["requests"]["url"] == setup.request_url
    assert any("visibility timeout 2 s" in w for w in by_role["requests"]["warnings"])


# -- the dead-letter queue -----------------------------------------------------------


@dataclass
class DeadLetters:
    """An app whose dead-letter queue holds three requests of two tenants."""

    app: AsyncLLM
    gate: threading.Event
    shut_acme: str
    shut_globex: str
    rate_limited_acme: str
    dlq_url: str
    request_url: str


@pytest.fixture
def dead_letters(make_app: AppFactory, sqs_client: Any) -> DeadLetters:
    """Two requests a worker refused terminally, one given up after rate limits."""
    app = make_app()
    gate = threading.Event()

    @app.handler
    def gatekeeper(request: AsyncRequest) -> ChatResponse:
        if not gate.is_set():
            raise TerminalError(GATE_SHUT, code="gate_shut")
        return ChatResponse.from_text("through the gate", model="echo")

    setup = app.check_queues()
    chat = {"model": "test", "messages": [{"role": "user", "content": PROMPT}]}
    with running_worker(app):
        acme = app.submit(chat, tenant_id="acme")
        globex = app.submit(chat, tenant_id="globex")
        wait_for(lambda: depth(sqs_client, setup.dead_letter_url) == 2)
    # What a worker leaves after a copy re-queued for rate limits failed.
    app.results.mark_queued("r-rate-limited", "acme")
    sqs_client.send_message(
        QueueUrl=setup.dead_letter_url,
        MessageBody=request_body("r-rate-limited", "acme"),
        MessageAttributes={
            "TenantID": {"DataType": "String", "StringValue": "acme"},
            "RequestID": {"DataType": "String", "StringValue": "r-rate-limited"},
            ATTR_REASON: {"DataType": "String", "StringValue": RATE_REASON},
            ATTR_FAILED_ATTEMPTS: {"DataType": "Number", "StringValue": "3"},
            ATTR_RATE_LIMITS: {"DataType": "Number", "StringValue": "20"},
        },
    )
    return DeadLetters(
        app=app,
        gate=gate,
        shut_acme=acme.id,
        shut_globex=globex.id,
        rate_limited_acme="r-rate-limited",
        dlq_url=setup.dead_letter_url,
        request_url=setup.request_url,
    )


def listed(result: Result) -> dict[str, dict[str, Any]]:
    assert result.exit_code == 0, result.output
    entries = [json.loads(line) for line in result.stdout.splitlines() if line]
    return {entry["request_id"]: entry for entry in entries}


def test_dlq_list_shows_id_tenant_reason_attempts_and_age_but_no_prompt_text(
    runner: CliRunner, env: dict[str, str], dead_letters: DeadLetters, sqs_client: Any
) -> None:
    result = invoke(runner, env, "dlq", "list")
    after = counts(sqs_client, dead_letters.dlq_url)

    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line}
    assert set(lines) == {
        dead_letters.shut_acme,
        dead_letters.shut_globex,
        dead_letters.rate_limited_acme,
    }
    assert lines[dead_letters.shut_acme].split()[1] == "acme"
    assert lines[dead_letters.shut_globex].split()[1] == "globex"
    assert (
        "terminal error: TerminalError, code gate_shut" in lines[dead_letters.shut_acme]
    )
    assert GATE_SHUT not in result.output  # an error's text may quote the prompt
    assert RATE_REASON in lines[dead_letters.rate_limited_acme]
    assert "attempts=1" in lines[dead_letters.shut_acme]
    assert "attempts=1" in lines[dead_letters.shut_globex]
    assert "attempts=3" in lines[dead_letters.rate_limited_acme]
    for line in lines.values():
        assert "age=" in line
        assert "age=-" not in line
    assert PROMPT not in result.output
    assert "Okafor" not in result.output
    assert after == (3, 0)


def test_a_letter_the_redrive_policy_moved_lists_the_queues_max_receives_as_attempts(
    runner: CliRunner, env: dict[str, str], make_app: AppFactory, sqs_client: Any
) -> None:
    setup = make_app().check_queues()
    sqs_client.send_message(  # as SQS moves it: no asyncllm attribute added
        QueueUrl=setup.dead_letter_url, MessageBody=request_body("r-moved", "acme")
    )

    first = invoke(runner, env, "dlq", "list")
    second = invoke(runner, env, "dlq", "list")

    for result in (first, second):
        assert result.exit_code == 0, result.output
        assert "attempts=3" in result.stdout
        assert "failed every attempt (redrive policy)" in result.stdout


def test_dlq_list_prints_the_prompt_text_only_with_show_body(
    runner: CliRunner, env: dict[str, str], dead_letters: DeadLetters, sqs_client: Any
) -> None:
    plain = listed(invoke(runner, env, "dlq", "list", "--json"))
    with_body = listed(invoke(runner, env, "dlq", "list", "--json", "--show-body"))
    after = counts(sqs_client, dead_letters.dlq_url)

    assert len(plain) == 3
    assert all("body" not in entry for entry in plain.values())
    assert len(with_body) == 3
    for entry in with_body.values():
        assert PROMPT in entry["body"]
        assert entry["receives"] >= 1
        assert entry["attempts"] >= 1
        assert entry["age_seconds"] is not None
    assert after == (3, 0)


def test_dlq_list_filters_by_tenant_and_by_reason(
    runner: CliRunner, env: dict[str, str], dead_letters: DeadLetters
) -> None:
    acme = listed(invoke(runner, env, "dlq", "list", "--json", "--tenant", "acme"))
    shut = listed(invoke(runner, env, "dlq", "list", "--json", "--reason", "Gate_Shut"))
    rate = listed(invoke(runner, env, "dlq", "list", "--json", "--reason", "ratelimit"))

    assert set(acme) == {dead_letters.shut_acme, dead_letters.rate_limited_acme}
    assert {entry["tenant_id"] for entry in acme.values()} == {"acme"}
    assert set(shut) == {dead_letters.shut_acme, dead_letters.shut_globex}
    assert set(rate) == {dead_letters.rate_limited_acme}
    assert rate[dead_letters.rate_limited_acme]["reason"] == RATE_REASON


def test_dlq_redrive_dry_run_moves_nothing(
    runner: CliRunner, env: dict[str, str], dead_letters: DeadLetters, sqs_client: Any
) -> None:
    result = invoke(runner, env, "dlq", "redrive", "--dry-run")

    assert result.exit_code == 0, result.output
    assert result.stdout.count("would move") == 4
    assert "3 of 3 dead letters would move" in result.stdout
    assert counts(sqs_client, dead_letters.dlq_url) == (3, 0)
    assert depth(sqs_client, dead_letters.request_url) == 0


def test_dlq_redrive_by_tenant_moves_only_that_tenant_with_fresh_attempts(
    runner: CliRunner, env: dict[str, str], dead_letters: DeadLetters, sqs_client: Any
) -> None:
    app = dead_letters.app
    acme_ids = {dead_letters.shut_acme, dead_letters.rate_limited_acme}

    result = invoke(runner, env, "dlq", "redrive", "--tenant", "acme")
    moved = peek(sqs_client, dead_letters.request_url, expect=2)
    left = peek(sqs_client, dead_letters.dlq_url, expect=1)

    assert result.exit_code == 0, result.output
    assert "2 of 3 dead letters moved" in result.stdout
    assert {string_attributes(m)["RequestID"] for m in moved} == acme_ids
    for message in moved:
        attributes = string_attributes(message)
        assert attributes["TenantID"] == "acme"
        assert ATTR_REASON not in attributes
        assert ATTR_FAILED_ATTEMPTS not in attributes
        assert ATTR_RATE_LIMITS not in attributes
        assert json.loads(message["Body"])["id"] == attributes["RequestID"]
    assert [string_attributes(m)["RequestID"] for m in left] == [
        dead_letters.shut_globex
    ]
    assert counts(sqs_client, dead_letters.dlq_url) == (1, 0)

    dead_letters.gate.set()
    with running_worker(app):
        wait_for(
            lambda: all(app.status(i, "acme") is Status.COMPLETED for i in acme_ids)
        )
    answers = [app.get_result(i, tenant_id="acme") for i in sorted(acme_ids)]

    assert [answer.ok for answer in answers] == [True, True]
    # One receive by peek() above, one by the worker: the rate-limited copy's
    # two failed attempts no longer count (with them it would read 4).
    assert [answer.attempts for answer in answers] == [2, 2]
    assert app.status(dead_letters.shut_globex) is Status.FAILED
    assert depth(sqs_client, dead_letters.request_url) == 0


# -- purge ---------------------------------------------------------------------------


def test_queues_purge_asks_first_and_purges_only_with_yes(
    runner: CliRunner, env: dict[str, str], make_app: AppFactory, sqs_client: Any
) -> None:
    app = make_app()
    setup = app.check_queues()
    chat = {"model": "test", "messages": [{"role": "user", "content": "purge me"}]}
    app.submit_many([chat, chat])

    declined = invoke(runner, env, "queues", "purge", "requests", stdin="n\n")
    kept = depth(sqs_client, setup.request_url)
    confirmed = invoke(runner, env, "queues", "purge", "requests", "--yes")

    assert declined.exit_code == 1
    assert "Delete every message of" in declined.output
    assert "Aborted" in declined.output
    assert kept == 2
    assert confirmed.exit_code == 0, confirmed.output
    assert f"purged {setup.request_url}" in confirmed.stdout
    wait_for(lambda: depth(sqs_client, setup.request_url) == 0, timeout=10)
