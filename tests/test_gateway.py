"""The HTTP gateway over real HTTP on 127.0.0.1, with a real worker and local SQS."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from asyncllm import (
    AsyncLLM,
    AsyncRequest,
    ChatResponse,
    ConfigurationError,
    WebhookSender,
    WebhookSettings,
    verify_webhook,
)
from asyncllm.gateway import ApiKey, ApiKeys, create_gateway, hash_key

from .conftest import CHAT, running_worker, test_queue_options
from .receivers import receiver
from .support import PROJECT_ROOT, cli_environment, wait_for

ACME_KEY = "sk-acme-0123456789abcdef"
GLOBEX_KEY = "sk-globex-fedcba9876543210"
KEYS = ApiKeys(
    [
        ApiKey("acme", hash_key(ACME_KEY), "acme-test"),
        ApiKey("globex", hash_key(GLOBEX_KEY)),
    ]
)
ACME = {"Authorization": f"Bearer {ACME_KEY}"}
GLOBEX = {"Authorization": f"Bearer {GLOBEX_KEY}"}
SECRET = "whsec_dGhlLWdhdGV3YXktdGVzdC1zZWNyZXQ="
#: Callbacks to the test's own receiver only: http on loopback, allow-listed.
LOCAL_HOOKS = WebhookSettings(
    default_secret=SECRET,
    allow_http=True,
    allow=("127.0.0.1/32",),
    initial_backoff_seconds=0.05,
)


@contextmanager
def serving(api: Any) -> Iterator[httpx.Client]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 (a free port) in a thread."""
    config = uvicorn.Config(api, host="127.0.0.1", port=0, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-gateway", daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive())
    assert server.started, "the gateway did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive(), "the gateway did not stop"


def start_gateway(app: AsyncLLM, **options: Any) -> Any:
    options.setdefault("webhooks", LOCAL_HOOKS)
    return serving(create_gateway(app, KEYS, **options))


def reverse(request: AsyncRequest) -> ChatResponse:
    text = request.request.messages[-1].content
    assert isinstance(text, str)
    return ChatResponse.from_text(text[::-1], model="echo")


def poll(client: httpx.Client, request_id: str, status: int = 200) -> httpx.Response:
    """GET a request until it answers ``status`` (bounded)."""
    answers: list[httpx.Response] = []

    def answered() -> bool:
        answers.append(client.get(f"/v1/async/{request_id}", headers=ACME))
        return answers[-1].status_code == status

    wait_for(answered, interval=0.1)
    return answers[-1]


def submit(client: httpx.Client, body: Any = None, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", ACME)
    if "content" not in kwargs:
        kwargs["json"] = CHAT if body is None else body
    return client.post("/v1/async/chat", **kwargs)


@dataclass
class Shared:
    """A gateway shared by the tests of this module that need no worker."""

    app: AsyncLLM
    client: httpx.Client


@pytest.fixture(scope="module")
def shared(sqs_endpoint: str, tmp_path_factory: Any) -> Iterator[Shared]:
    """One gateway on its own queues, https-only callbacks, a 64 KiB body limit."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    folder = tmp_path_factory.mktemp("gateway")
    app = AsyncLLM(
        "shared-gateway",
        endpoint_url=sqs_endpoint,
        request_queue=f"{prefix}-requests",
        response_queue=f"{prefix}-responses",
        result_store=f"sqlite:///{folder / 'results.sqlite3'}",
        ledger=f"sqlite:///{folder / 'ledger.sqlite3'}",
        wait_time_seconds=1,
    )
    app.create_queues(test_queue_options())
    options = {"max_body_bytes": 65_536, "webhooks": WebhookSettings()}
    with start_gateway(app, **options) as client:
        yield Shared(app, client)
    app.close()


# -- the main flow -------------------------------------------------------------


def test_a_posted_request_is_queued_then_answered_and_read_back_over_http(
    make_app: Any,
) -> None:
    gateway_app, worker_app = make_app(), make_app()
    release = threading.Event()

    @worker_app.handler
    def held(request: AsyncRequest) -> ChatResponse:
        release.wait(15)
        return reverse(request)

    with running_worker(worker_app), start_gateway(gateway_app) as client:
        try:
            accepted = submit(client)
            request_id = accepted.json()["request_id"]
            queued = client.get(f"/v1/async/{request_id}", headers=ACME)
        finally:
            release.set()
        answer = poll(client, request_id)

    assert accepted.status_code == 202
    assert accepted.json() == {
        "request_id": request_id,
        "status": "queued",
        "status_url": f"{client.base_url}/v1/async/{request_id}",
    }
    assert accepted.headers["location"] == accepted.json()["status_url"]
    assert queued.status_code == 202
    assert queued.json() == {"request_id": request_id, "status": "queued"}
    assert queued.headers["retry-after"] == "1"
    body = answer.json()
    assert body["status"] == "completed"
    assert (body["request_id"], body["tenant_id"]) == (request_id, "acme")
    text = CHAT["messages"][0]["content"][::-1]
    assert body["response"]["choices"][0]["message"]["content"] == text
    assert body["error"] is None


def test_the_chat_request_reaches_the_handler_as_sent(make_app: Any) -> None:
    gateway_app, worker_app = make_app(), make_app()
    seen: list[AsyncRequest] = []

    @worker_app.handler
    def record(request: AsyncRequest) -> ChatResponse:
        seen.append(request)
        return ChatResponse.from_text("ok", model="echo")

    chat = {
        **CHAT,
        "top_k": 40,
        "seed": 2**70,
        "metadata": None,
        "logit_bias": {"50256": -100},
        "vendor": {"nested": [1, 2.5, None, "x"]},
    }
    body = {**chat, "provider": "bedrock", "callback": None}
    with running_worker(worker_app), start_gateway(gateway_app) as client:
        poll(client, submit(client, body).json()["request_id"])

    (request,) = seen
    assert request.request.to_wire() == chat
    assert (request.tenant_id, request.provider, request.callback) == (
        "acme",
        "bedrock",
        None,
    )


def test_a_callback_gets_the_signed_answer(make_app: Any) -> None:
    gateway_app, worker_app = make_app(), make_app()
    worker_app.handler(reverse)
    sender = WebhookSender(LOCAL_HOOKS)

    with (
        receiver() as hook,
        running_worker(worker_app, webhooks=sender),
        start_gateway(gateway_app) as client,
    ):
        request_id = submit(client, {**CHAT, "callback": hook.url}).json()["request_id"]
        (got,) = hook.wait_for(1)

    verify_webhook(SECRET, got.headers, got.body)
    assert json.loads(got.body)["request_id"] == request_id


# -- authentication and tenants ------------------------------------------------


def test_another_tenants_id_reads_as_unknown(shared: Shared) -> None:
    client = shared.client

    request_id = submit(client).json()["request_id"]
    theirs = client.get(f"/v1/async/{request_id}", headers=GLOBEX)
    unknown = client.get("/v1/async/no-such-request", headers=GLOBEX)
    mine = client.get(f"/v1/async/{request_id}", headers=ACME)

    assert (theirs.status_code, unknown.status_code) == (404, 404)
    assert theirs.json()["error"]["type"] == unknown.json()["error"]["type"]
    assert theirs.json()["error"]["param"] == "request_id"
    assert mine.status_code == 202


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk-wrong"},
        {"Authorization": f"Basic {ACME_KEY}"},
        {"Authorization": "Bearer"},
    ],
)
def test_a_missing_or_bad_key_gets_401_and_learns_nothing_about_ids(
    shared: Shared, headers: dict[str, str]
) -> None:
    client = shared.client

    request_id = submit(client).json()["request_id"]
    known = client.get(f"/v1/async/{request_id}", headers=headers)
    unknown = client.get("/v1/async/no-such-request", headers=headers)
    posted = submit(client, headers=headers)

    for answer in (known, unknown, posted):
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
    assert known.json() == unknown.json() == posted.json()


def test_the_tenant_comes_from_the_key_never_the_body(shared: Shared) -> None:
    body = {**CHAT, "tenant_id": "globex"}

    request_id = submit(shared.client, body).json()["request_id"]

    assert shared.app.results.get(request_id, "acme") is not None
    assert shared.app.results.get(request_id, "globex") is None


# -- refusals ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"stream": True}, "stream"),
        ({"temperature": "hot"}, "temperature"),
        ({"provider": 5}, "provider"),
        ({"callback": "ftp://hooks.example.com/x"}, "callback"),
        ({"callback": "https://169.254.169.254/latest/meta-data/"}, "callback"),
    ],
)
def test_an_invalid_request_gets_422_naming_the_field(
    shared: Shared, change: dict[str, Any], param: str
) -> None:
    body = {k: v for k, v in {**CHAT, **change}.items() if v is not None}

    answer = submit(shared.client, body)

    assert answer.status_code == 422
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request", param)
    assert error["message"].startswith(param)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[1, 2]",
        b'{"model": NaN}',
        b"[" * 100 + b"]" * 100,
        b'{"a":' * 70 + b"1" + b"}" * 70,
        b"[" * 30_000 + b"]" * 30_000,
        b"\xff",
        b'{"model": "m", "model": "n", "messages": []}',
    ],
)
def test_a_body_that_is_not_a_json_object_gets_400(
    shared: Shared, content: bytes
) -> None:
    answer = submit(shared.client, content=content)

    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_json"


def test_an_oversize_body_gets_413_before_it_is_parsed(shared: Shared) -> None:
    def chunks() -> Iterator[bytes]:
        yield from (b"x" * 16_384 for _ in range(5))

    declared = submit(shared.client, content=b"x" * 65_537)
    streamed = submit(shared.client, content=chunks())
    long_text = {"role": "user", "content": "x" * 60_000}
    fits = submit(shared.client, {**CHAT, "messages": [long_text]})

    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert declared.json()["error"]["type"] == "payload_too_large"
    assert fits.status_code == 202


def test_an_expired_result_gets_410(make_app: Any) -> None:
    with start_gateway(make_app(result_ttl_seconds=1)) as client:
        request_id = submit(client).json()["request_id"]
        time.sleep(1.2)
        answer = client.get(f"/v1/async/{request_id}", headers=ACME)

    assert answer.status_code == 410
    assert answer.json()["error"]["type"] == "expired"


def test_a_gateway_needs_a_positive_body_limit(shared: Shared) -> None:
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        create_gateway(shared.app, KEYS, max_body_bytes=0)


# -- health, readiness, the OpenAPI document -----------------------------------


def test_health_and_readiness_answer_without_a_key(
    shared: Shared, app_settings: dict[str, Any]
) -> None:
    missing = AsyncLLM("no-queues", **app_settings)  # its queues were never made

    health = shared.client.get("/healthz")
    ready = shared.client.get("/readyz")
    with start_gateway(missing) as client:
        unready = client.get("/readyz")
    missing.close()

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})
    assert unready.status_code == 503
    assert unready.json() == {
        "status": "unavailable",
        "reason": "the request queue is unreachable",
    }


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset[Any]], float]:
    """GET /metrics and parse it: (sample name, labels) to value."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_the_metrics_count_calls_by_route_template_and_status_and_tenants(
    make_app: Any,
) -> None:
    app = make_app()
    with start_gateway(app) as client:
        submit(client)
        submit(client, headers=GLOBEX)
        submit(client, {"model": "m", "messages": []})
        client.get("/v1/async/no-such-id", headers=ACME)
        client.get("/v1/async/no-such-id")
        client.get("/not/a/route")
        for verb in ("BREW", "PROPFIND", "XYZZY"):
            client.request(verb, "/v1/async/chat", headers=ACME)
        samples = scrape(client)

    def calls(route: str, method: str, status: int) -> float:
        labels = {"route": route, "method": method, "status": str(status)}
        key = ("asyncllm_gateway_http_requests_total", frozenset(labels.items()))
        return samples.get(key, 0.0)

    assert calls("/v1/async/chat", "POST", 202) == 2
    assert calls("/v1/async/chat", "POST", 422) == 1
    assert calls("/v1/async/{request_id}", "GET", 404) == 1
    assert calls("/v1/async/{request_id}", "GET", 401) == 1
    assert calls("other", "GET", 404) == 1
    submitted = "asyncllm_gateway_requests_submitted_total"
    assert samples[(submitted, frozenset({("tenant", "acme")}))] == 1
    assert samples[(submitted, frozenset({("tenant", "globex")}))] == 1
    timed = "asyncllm_gateway_http_request_duration_seconds_count"
    # Three POSTs and three calls with unusual methods (405).
    assert samples[(timed, frozenset({("route", "/v1/async/chat")}))] == 6
    assert not any("no-such-id" in str(labels) for _, labels in samples)
    methods = {
        value
        for name, labels in samples
        if name == "asyncllm_gateway_http_requests_total"
        for key, value in labels
        if key == "method"
    }
    assert methods == {"GET", "POST", "other"}


def test_metrics_can_be_turned_off(make_app: Any) -> None:
    with start_gateway(make_app(), metrics=False) as client:
        answer = client.get("/metrics")

    assert answer.status_code == 404


def test_the_openapi_document_describes_the_chat_body(shared: Shared) -> None:
    document = shared.client.get("/openapi.json").json()

    assert set(document["paths"]) == {
        "/v1/async/chat",
        "/v1/async/{request_id}",
        "/healthz",
        "/readyz",
    }
    body = document["components"]["schemas"]["AsyncChatRequest"]
    assert {"model", "messages", "provider", "callback"} <= set(body["properties"])
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == (
        "bearer"
    )


def test_a_property_based_run_against_the_openapi_document_finds_no_server_error(
    shared: Shared,
) -> None:
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]

    url = f"{shared.client.base_url}/openapi.json"
    schema = schemathesis.openapi.from_url(url)
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in generation_modes(operation):
            run_examples(operation, mode, checks)

    assert len(operations) == 4


def generation_modes(operation: Any) -> list[Any]:
    """Valid data for every operation, invalid data where there is input."""
    has_input = bool(list(operation.iter_parameters())) or bool(operation.body)
    negative = [schemathesis.GenerationMode.NEGATIVE] if has_input else []
    return [schemathesis.GenerationMode.POSITIVE, *negative]


def run_examples(operation: Any, mode: Any, checks: list[Any]) -> None:
    """Call one operation with up to 25 generated requests and check each answer."""

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(headers=ACME, checks=checks, timeout=20)

    run()


# -- the command line, with the documentation's curl commands ------------------


def curl_commands(path: Path) -> list[str]:
    """The ``curl`` commands of a document's shell blocks, continuations joined."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    return [
        re.sub(r"\s+", " ", line).strip()
        for line in text.splitlines()
        if line.startswith("curl ")
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_documented_curl_examples_work_against_the_gateway_command(
    make_app: Any, app_settings: dict[str, Any], tmp_path: Path
) -> None:
    worker_app = make_app()
    worker_app.handler(reverse)
    keys = {"keys": [{"tenant": "acme", "sha256": hash_key(ACME_KEY)}]}
    (tmp_path / "keys.json").write_text(json.dumps(keys), encoding="utf-8")
    port = free_port()
    documented = curl_commands(PROJECT_ROOT / "README.md")
    submit_command, poll_command = documented[:2]
    env = cli_environment(app_settings, ASYNCLLM_KEY=ACME_KEY)

    with (
        running_worker(worker_app),
        gateway_process(env, port, tmp_path / "keys.json", tmp_path / "log"),
    ):
        accepted = json.loads(shell(submit_command, port, env))
        poll_command = poll_command.replace("REQUEST_ID", accepted["request_id"])
        wait_for(lambda: '"completed"' in shell(poll_command, port, env))
        answer = json.loads(shell(poll_command, port, env))

    assert accepted["status"] == "queued"
    assert answer["response"]["choices"][0]["message"]["content"] == "iH"


def shell(command: str, port: int, env: dict[str, str]) -> str:
    command = command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    done = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    return done.stdout


@contextmanager
def gateway_process(
    env: dict[str, str], port: int, keys: Path, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``asyncllm gateway`` on 127.0.0.1 until the block ends."""
    command = [sys.executable, "-m", "asyncllm", "gateway", "--port", str(port)]
    command += ["--keys", str(keys)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: process.poll() is not None or healthy(port))
        assert process.poll() is None, log_path.read_text(errors="replace")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)
    log = log_path.read_text(errors="replace")
    # uvicorn shuts down gracefully, then re-raises SIGTERM for the supervisor.
    assert process.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_the_gateway_command_refuses_to_start_without_keys(
    app_settings: dict[str, Any],
) -> None:
    env = cli_environment(app_settings)
    done = subprocess.run(
        [sys.executable, "-m", "asyncllm", "gateway", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert "the gateway needs API keys" in done.stderr


def test_api_keys_load_from_a_file_or_the_environment(tmp_path: Path) -> None:
    entries = [{"tenant": "acme", "sha256": hash_key(ACME_KEY), "name": "ci"}]
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": entries}), encoding="utf-8")

    from_file = ApiKeys.from_file(path)
    from_env = ApiKeys.from_env(
        {"ASYNCLLM_GATEWAY_KEYS": json.dumps({"keys": entries})}
    )

    for keys in (from_file, from_env):
        found = keys.find(ACME_KEY)
        assert found is not None
        assert (found.tenant, found.name) == ("acme", "ci")
        assert keys.find("sk-wrong") is None


def test_the_documented_key_file_loads() -> None:
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```json\n(\{\"keys\".*?)```", text, re.DOTALL)

    keys = ApiKeys.from_json(block)

    assert len(keys) == 2


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[]", "must be"),
        ('{"keys": [{"tenant": "acme", "sha256": "abc"}]}', "64 hex digits"),
        ('{"keys": [{"sha256": "' + "a" * 64 + '"}]}', "tenant must be"),
        (
            '{"keys": [{"tenant": "a", "sha256": "'
            + "b" * 64
            + '"}, {"tenant": "c", "sha256": "'
            + "b" * 64
            + '"}]}',
            "listed for tenants",
        ),
    ],
)
def test_a_bad_key_list_is_a_configuration_error(text: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        ApiKeys.from_json(text)


def test_keys_are_held_only_as_digests() -> None:
    assert ACME_KEY not in repr(KEYS)
    assert all(ACME_KEY not in str(vars(key)) for key in KEYS._keys)
