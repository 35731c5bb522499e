"""The command line, with click's runner and as real processes."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from asyncllm import AsyncLLM, AsyncRequest, AsyncResponse, ChatResponse, ErrorInfo
from asyncllm import encode as encode_message
from asyncllm._demo import shorten
from asyncllm._local import LocalSQS, PortInUse
from asyncllm.cli import cli

from .conftest import CHAT, running_worker
from .support import (
    calls_of,
    invoke,
    receive,
    run_cli,
    worker_process,
)

EXIT_FAILED, EXIT_PENDING, EXIT_NOT_FOUND = 3, 4, 5


def publish(sqs_client: Any, app: AsyncLLM, response: AsyncResponse) -> None:
    """Put a response on the app's response queue, as a worker would."""
    url = app.broker.queue_url(app.settings.response_queue)
    sqs_client.send_message(QueueUrl=url, MessageBody=encode_message(response))


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# -- queues, schema, submit -----------------------------------------------------------


def test_queues_create_prints_three_queue_urls(
    runner: CliRunner, env: dict[str, str], sqs_client: Any
) -> None:
    options = ["--visibility-timeout", "2", "--receive-wait-seconds", "0"]

    done = invoke(runner, env, "queues", "create", *options)

    assert done.exit_code == 0, done.output
    urls = [line.split()[-1] for line in lines(done.stdout)[-3:]]
    endpoint = env["ASYNCLLM_SQS_ENDPOINT_URL"]
    assert all(url.startswith(endpoint) for url in urls)
    assert urls[0].endswith("/" + env["ASYNCLLM_REQUEST_QUEUE"])
    assert urls[1].endswith("/" + env["ASYNCLLM_RESPONSE_QUEUE"])
    attributes = sqs_client.get_queue_attributes(
        QueueUrl=urls[0], AttributeNames=["All"]
    )["Attributes"]
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] in (3, "3")
    assert attributes["VisibilityTimeout"] == "2"
    assert sqs_client.get_queue_url(QueueName=urls[2].rsplit("/", 1)[-1])


def test_schema_request_prints_a_json_schema_naming_tenant_id(
    runner: CliRunner,
) -> None:
    done = runner.invoke(cli, ["schema", "request"])

    assert done.exit_code == 0, done.output
    schema = json.loads(done.stdout)
    assert "tenant_id" in schema["properties"]
    assert "request" in schema["properties"]
    assert schema["$schema"].startswith("https://json-schema.org/")


def test_schema_response_names_request_id(runner: CliRunner) -> None:
    done = runner.invoke(cli, ["schema", "response"])

    assert done.exit_code == 0, done.output
    assert "request_id" in json.loads(done.stdout)["properties"]


def test_submit_a_file_prints_the_id_of_the_queued_request(
    runner: CliRunner,
    env: dict[str, str],
    make_app: Any,
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    app = make_app()
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({**CHAT, "seed": 2**53 + 1}), encoding="utf-8")

    done = invoke(runner, env, "submit", str(path), "-t", "acme")

    assert done.exit_code == 0, done.output
    [request_id] = lines(done.stdout)
    assert uuid.UUID(request_id)
    queued = receive(sqs_client, app.broker.queue_url(app.settings.request_queue))
    body = json.loads(queued[0]["Body"])
    assert body["id"] == request_id
    assert body["tenant_id"] == "acme"
    assert body["request"]["seed"] == 2**53 + 1


def test_submit_a_whole_async_request_keeps_its_id_and_tenant(
    runner: CliRunner,
    env: dict[str, str],
    make_app: Any,
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    app = make_app()
    path = tmp_path / "request.json"
    whole = {"id": "00042", "tenant_id": "globex", "request": CHAT}
    path.write_text(json.dumps(whole), encoding="utf-8")

    done = invoke(runner, env, "submit", str(path))

    assert done.exit_code == 0, done.output
    assert lines(done.stdout) == ["00042"]
    queued = receive(sqs_client, app.broker.queue_url(app.settings.request_queue))
    assert json.loads(queued[0]["Body"])["tenant_id"] == "globex"


def test_submit_from_stdin_with_wait_prints_the_completed_response(
    runner: CliRunner, env: dict[str, str], make_app: Any
) -> None:
    app = make_app()

    @app.handler
    def shout(request: AsyncRequest) -> ChatResponse:
        text = str(request.request.messages[-1].content)
        return ChatResponse.from_text(text.upper(), model="shout")

    with running_worker(app):
        done = invoke(
            runner, env, "submit", "-", "--wait", "20", "--json", stdin=json.dumps(CHAT)
        )

    assert done.exit_code == 0, done.output
    request_id, printed = lines(done.stdout)
    answer = json.loads(printed)
    assert answer["status"] == "completed"
    assert answer["request_id"] == request_id
    content = answer["response"]["choices"][0]["message"]["content"]
    assert content == CHAT["messages"][0]["content"].upper()


# -- result exit statuses -------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "exit_code", "status"),
    [
        ("completed", 0, "completed"),
        ("failed", EXIT_FAILED, "failed"),
        ("queued", EXIT_PENDING, "queued"),
        ("unknown", EXIT_NOT_FOUND, "not_found"),
    ],
)
def test_result_exit_status_tells_where_the_request_stands(
    outcome: str,
    exit_code: int,
    status: str,
    runner: CliRunner,
    env: dict[str, str],
    make_app: Any,
    sqs_client: Any,
) -> None:
    app = make_app()
    request_id = app.submit(CHAT, tenant_id="acme").id
    if outcome == "completed":
        completion = ChatResponse.from_text("done", model="m")
        publish(
            sqs_client,
            app,
            AsyncResponse(request_id=request_id, tenant_id="acme", response=completion),
        )
    elif outcome == "failed":
        error = ErrorInfo(type="RuntimeError", message="down")
        publish(
            sqs_client,
            app,
            AsyncResponse(
                request_id=request_id, tenant_id="acme", error=error, attempts=3
            ),
        )
    elif outcome == "unknown":
        request_id = "never-submitted"

    done = invoke(runner, env, "result", request_id, "--wait", "1", "--json")

    assert done.exit_code == exit_code, done.output
    printed = json.loads(lines(done.stdout)[-1])
    assert printed["status"] == status
    assert printed["request_id"] == request_id


def test_result_for_another_tenant_reads_as_not_found(
    runner: CliRunner, env: dict[str, str], make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    request_id = app.submit(CHAT, tenant_id="acme").id
    completion = ChatResponse.from_text("secret", model="m")
    publish(
        sqs_client,
        app,
        AsyncResponse(request_id=request_id, tenant_id="acme", response=completion),
    )

    other = invoke(runner, env, "result", request_id, "-t", "globex", "--wait", "1")
    own = invoke(runner, env, "result", request_id, "-t", "acme", "--wait", "1")

    assert other.exit_code == EXIT_NOT_FOUND, other.output
    assert "secret" not in other.output
    assert own.exit_code == 0, own.output
    assert lines(own.stdout) == ["secret"]


# -- mistakes on the command line ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param('{"model": "m", "messages": [', "not JSON", id="not-json"),
        pytest.param("[1, 2, 3]", "expected a JSON object", id="array"),
    ],
)
def test_a_bad_file_exits_2_with_a_clear_message(
    content: str,
    message: str,
    runner: CliRunner,
    env: dict[str, str],
    make_app: Any,
    tmp_path: Path,
) -> None:
    make_app()
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")

    done = invoke(runner, env, "submit", str(path))

    assert done.exit_code == 2, done.output
    assert message in done.stderr
    assert "Traceback" not in done.output


def test_a_missing_file_exits_2_naming_it(
    runner: CliRunner, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "nowhere.json"

    done = invoke(runner, env, "submit", str(path))

    assert done.exit_code == 2, done.output
    assert "nowhere.json" in done.stderr


def test_a_file_with_an_invalid_request_exits_2_naming_the_field(
    runner: CliRunner,
    env: dict[str, str],
    make_app: Any,
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    app = make_app()
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"model": "m", "messages": []}), encoding="utf-8")

    done = invoke(runner, env, "submit", str(path))

    assert done.exit_code == 2, done.output
    assert "messages" in done.stderr
    url = app.broker.queue_url(app.settings.request_queue)
    assert receive(sqs_client, url, timeout=1) == []


def test_worker_without_an_app_is_a_usage_error(
    runner: CliRunner, env: dict[str, str]
) -> None:
    done = invoke(runner, env, "worker")

    assert done.exit_code == 2, done.output
    assert "-A" in done.stderr


def test_worker_with_an_app_that_cannot_be_imported_is_a_usage_error(
    runner: CliRunner, env: dict[str, str]
) -> None:
    done = invoke(runner, env, "worker", "-A", "tests.no_such_module:app")

    assert done.exit_code == 2, done.output
    assert "tests.no_such_module" in done.stderr


# -- real processes ---------------------------------------------------------------


def test_worker_on_a_queue_without_a_redrive_policy_exits_1_naming_it(
    env: dict[str, str], sqs_client: Any
) -> None:
    sqs_client.create_queue(QueueName=env["ASYNCLLM_REQUEST_QUEUE"])
    sqs_client.create_queue(QueueName=env["ASYNCLLM_RESPONSE_QUEUE"])

    done = run_cli(["worker", "-A", "tests.apps:app", "--wait-time-seconds", "1"], env)

    assert done.returncode == 1, done.stderr
    assert "RedrivePolicy" in done.stderr
    assert "Traceback" not in done.stderr


def test_queues_create_and_submit_in_processes_print_urls_and_an_id(
    env: dict[str, str], sqs_client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(CHAT), encoding="utf-8")

    created = run_cli(["queues", "create", "--visibility-timeout", "2"], env)
    submitted = run_cli(["submit", str(path), "-t", "acme"], env)

    assert created.returncode == 0, created.stderr
    urls = [line.split()[-1] for line in lines(created.stdout)]
    assert len(urls) == 3
    assert all(url.startswith(env["ASYNCLLM_SQS_ENDPOINT_URL"]) for url in urls)
    assert submitted.returncode == 0, submitted.stderr
    [request_id] = lines(submitted.stdout)
    queued = receive(sqs_client, urls[0])
    assert [json.loads(m["Body"])["id"] for m in queued] == [request_id]


def test_a_worker_process_answers_a_request_from_stdin_and_stops_on_sigterm(
    env: dict[str, str], make_app: Any, tmp_path: Path
) -> None:
    make_app()
    calls = tmp_path / "calls.txt"
    env["ASYNCLLM_TEST_CALLS"] = str(calls)

    with worker_process(env, tmp_path / "worker.log") as worker:
        submitted = run_cli(
            ["submit", "-", "--wait", "20"], env, stdin=json.dumps(CHAT)
        )

    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
    assert submitted.returncode == 0, submitted.stderr
    request_id, answer = lines(submitted.stdout)
    assert answer == CHAT["messages"][0]["content"]
    assert calls_of(calls, request_id) == 1


def test_a_worker_process_retries_failures_and_submit_wait_reports_them(
    env: dict[str, str], make_app: Any, tmp_path: Path
) -> None:
    make_app()
    calls = tmp_path / "calls.txt"
    env["ASYNCLLM_TEST_CALLS"] = str(calls)
    chat = json.dumps(CHAT)
    wait = ["--wait", "20", "--json"]

    with worker_process(env, tmp_path / "worker.log") as worker:
        failed = run_cli(["submit", "-", "--handler", "always-fail", *wait], env, chat)
        recovered = run_cli(["submit", "-", "--handler", "fail-once", *wait], env, chat)

    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
    assert failed.returncode == EXIT_FAILED, failed.stdout + failed.stderr
    failing_id, printed = lines(failed.stdout)
    failure = json.loads(printed)
    assert failure["status"] == "failed"
    assert failure["attempts"] == 3
    assert failure["error"]["message"] == "the provider is down"
    assert calls_of(calls, failing_id) == 3
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    flaky_id, printed = lines(recovered.stdout)
    assert json.loads(printed)["attempts"] == 2
    assert calls_of(calls, flaky_id) == 2


# -- defects found by testing ---------------------------------------------------------


def test_a_file_that_is_not_utf8_exits_2_naming_it(
    runner: CliRunner, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "utf16.json"
    path.write_bytes(b"\xff\xfe\x00")

    done = invoke(runner, env, "submit", str(path))

    assert done.exit_code == 2, done.output
    assert "Invalid value for FILE: " in done.stderr
    assert "utf16.json" in done.stderr
    assert "not UTF-8" in done.stderr
    assert "Traceback" not in done.output


def write_chat(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({**CHAT, **fields}), encoding="utf-8")
    return path


@pytest.mark.parametrize("via", ["-A", "ASYNCLLM_APP"])
def test_submit_with_a_handler_the_app_lacks_exits_2_listing_its_handlers(
    via: str,
    runner: CliRunner,
    env: dict[str, str],
    make_app: Any,
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    app = make_app()
    path = write_chat(tmp_path)
    args = ["submit", str(path), "--handler", "nosuch"]
    if via == "-A":
        args += ["-A", "tests.apps:app"]
    else:
        env["ASYNCLLM_APP"] = "tests.apps:app"

    done = invoke(runner, env, *args)

    assert done.exit_code == 2, done.output
    assert "Invalid value for '--handler': 'nosuch'" in done.stderr
    assert "always-fail, echo, fail-once" in done.stderr
    url = app.broker.queue_url(app.settings.request_queue)
    assert receive(sqs_client, url, timeout=1) == []


def test_a_whole_request_naming_a_handler_the_app_lacks_exits_2_naming_file(
    runner: CliRunner, env: dict[str, str], make_app: Any, tmp_path: Path
) -> None:
    make_app()
    path = tmp_path / "request.json"
    whole = {"tenant_id": "acme", "request": CHAT, "handler": "nosuch"}
    path.write_text(json.dumps(whole), encoding="utf-8")

    done = invoke(runner, env, "submit", str(path), "-A", "tests.apps:app")

    assert done.exit_code == 2, done.output
    assert "Invalid value for FILE: 'nosuch'" in done.stderr


def test_submit_with_a_handler_the_app_has_queues_the_request_for_it(
    env: dict[str, str], make_app: Any, sqs_client: Any, tmp_path: Path
) -> None:
    app = make_app()
    path = write_chat(tmp_path)

    args = ["submit", str(path), "-A", "tests.apps:app", "--handler", "fail-once"]
    done = run_cli(args, env)

    assert done.returncode == 0, done.stderr
    queued = receive(sqs_client, app.broker.queue_url(app.settings.request_queue))
    assert json.loads(queued[0]["Body"])["handler"] == "fail-once"


@pytest.mark.parametrize("tenant", ["", "   "])
def test_submit_with_a_blank_tenant_exits_2_naming_tenant(
    tenant: str,
    runner: CliRunner,
    env: dict[str, str],
    make_app: Any,
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    app = make_app()
    path = write_chat(tmp_path)

    done = invoke(runner, env, "submit", str(path), "--tenant", tenant)

    assert done.exit_code == 2, done.output
    assert f"Invalid value for '-t' / '--tenant': {tenant!r}" in done.stderr
    url = app.broker.queue_url(app.settings.request_queue)
    assert receive(sqs_client, url, timeout=1) == []


def test_submit_with_a_callback_that_is_not_http_exits_2_naming_callback(
    runner: CliRunner, env: dict[str, str], tmp_path: Path
) -> None:
    path = write_chat(tmp_path)

    done = invoke(runner, env, "submit", str(path), "--callback", "ftp://x")

    assert done.exit_code == 2, done.output
    assert "Invalid value for '--callback': 'ftp://x'" in done.stderr
    assert "FILE" not in done.stderr.splitlines()[-1]


def test_a_bad_variable_exits_1_with_one_line_naming_it(
    runner: CliRunner, env: dict[str, str]
) -> None:
    env["ASYNCLLM_WAIT_TIME_SECONDS"] = "abc"

    done = invoke(runner, env, "results", "stats")

    assert done.exit_code == 1, done.output
    assert done.stderr.strip().splitlines() == [
        "Error: ASYNCLLM_WAIT_TIME_SECONDS='abc' is not a whole number of seconds "
        "from 0 to 20; use e.g. 20"
    ]


def test_submit_logs_its_queued_line_only_at_debug(
    runner: CliRunner, env: dict[str, str], make_app: Any, tmp_path: Path
) -> None:
    make_app()
    path = write_chat(tmp_path)

    quiet = invoke(runner, env, "submit", str(path))
    verbose = invoke(runner, env, "--log-level", "DEBUG", "submit", str(path))

    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""
    assert verbose.exit_code == 0, verbose.output
    [request_id] = lines(verbose.stdout)
    [logged] = [line for line in lines(verbose.stderr) if "queued" in line]
    assert f"DEBUG   asyncllm._app: request {request_id} queued" in logged
    assert logging.getLogger("asyncllm._app").filters == []


@pytest.mark.parametrize(
    ("command", "described"),
    [
        (["dlq", "list"], "one JSON object per dead letter"),
        (["queues", "status"], "the queues as a JSON list"),
        (["results", "stats"], "the counts as one JSON object"),
    ],
)
def test_json_help_of_commands_that_print_no_response_says_what_they_print(
    command: list[str], described: str, runner: CliRunner
) -> None:
    done = runner.invoke(cli, [*command, "--help"])

    assert done.exit_code == 0, done.output
    assert described in " ".join(done.stdout.split())
    assert "AsyncResponse" not in done.stdout


def test_local_sqs_on_a_taken_port_exits_1_at_once_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        done = run_cli(["local-sqs", "--port", str(port)], dict(os.environ), timeout=30)

    assert done.returncode == 1, done.stdout + done.stderr
    [message] = lines(done.stderr)
    assert message.startswith(f"Error: port {port} on 127.0.0.1 is already in use")
    assert "--port" in message


def test_a_local_endpoint_on_a_taken_port_raises_port_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(PortInUse) as checked:
            LocalSQS(port).start()
        # Taken between the check and the bind: still an error, never a hang.
        monkeypatch.setattr("asyncllm._local._check_port_free", lambda h, p: None)
        with pytest.raises(PortInUse) as bound:
            LocalSQS(port).start()

    assert checked.value.port == port
    assert bound.value.port == port


def test_shorten_marks_cut_text_with_an_ellipsis() -> None:
    assert shorten("a" * 60) == "a" * 60
    assert shorten("a" * 61) == "a" * 59 + "…"
    assert len(shorten("b" * 500)) == 60


def test_the_demo_shows_the_worker_command_as_a_user_would_run_it() -> None:
    done = run_cli(["demo", "--timeout", "30"], dict(os.environ), timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    [worker] = [line for line in lines(done.stdout) if line.startswith("worker: ")]
    assert worker.startswith("worker: asyncllm --log-level WARNING worker -A ")
    assert "-m asyncllm" not in done.stdout
    answers = [line for line in lines(done.stdout) if " s  " in line]
    assert answers
    assert all(len(line.split(" s  ", 1)[1]) <= 60 for line in answers)
