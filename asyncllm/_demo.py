"""``asyncllm demo``: the whole flow on this machine, with nothing to set up.

It starts a local SQS endpoint on 127.0.0.1, creates the queues, starts a
worker process, submits the example requests (and one raw message written the
way a Go service would), prints each answer with its latency, stops the worker
with SIGTERM and exits 0 when every request was answered.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from ._app import AsyncLLM, AsyncResult
from ._errors import AsyncLLMError
from ._local import LocalSQS
from ._models import now_timestamp, parse_timestamp
from ._wire import make_attributes

__all__ = ["run_demo", "shorten"]


def run_demo(app_path: str, requests_dir: Path, timeout: float) -> int:
    """Run the demo; returns the exit status (0 when every request was answered)."""
    files = sorted(requests_dir.glob("*.json"))
    if not files:
        message = (
            f"no request files in {requests_dir}; run the demo from the project "
            "checkout or pass --requests DIR"
        )
        raise click.UsageError(message)
    with (
        tempfile.TemporaryDirectory(prefix="asyncllm-demo-") as state,
        LocalSQS() as sqs,
    ):
        env = _demo_environment(sqs.endpoint_url, Path(state))
        app = AsyncLLM(**_settings_from(env))
        setup = app.create_queues()
        click.echo(f"local SQS endpoint {sqs.endpoint_url}; queues ready")
        worker = _start_worker(app_path, env)
        try:
            return _submit_and_print(app, files, setup.request_url, timeout)
        finally:
            _stop_worker(worker)
            app.close()


def _demo_environment(endpoint_url: str, state: Path) -> dict[str, str]:
    return {
        "ASYNCLLM_SQS_ENDPOINT_URL": endpoint_url,
        "ASYNCLLM_REQUEST_QUEUE": "demo-requests",
        "ASYNCLLM_RESPONSE_QUEUE": "demo-responses",
        "ASYNCLLM_RESULT_STORE": f"sqlite:///{state / 'results.sqlite3'}",
        "ASYNCLLM_WAIT_TIME_SECONDS": "1",
        "AWS_REGION": "us-east-1",
    }


def _settings_from(env: dict[str, str]) -> dict[str, Any]:
    return {
        "endpoint_url": env["ASYNCLLM_SQS_ENDPOINT_URL"],
        "request_queue": env["ASYNCLLM_REQUEST_QUEUE"],
        "response_queue": env["ASYNCLLM_RESPONSE_QUEUE"],
        "result_store": env["ASYNCLLM_RESULT_STORE"],
        "wait_time_seconds": 1,
        "region": "us-east-1",
    }


def _start_worker(app_path: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    args = ["--log-level", "WARNING", "worker", "-A", app_path]
    args += ["--concurrency", "8", "--grace-seconds", "10"]
    # Shown as a user would type it; run with this interpreter.
    click.echo(f"worker: asyncllm {shlex.join(args)}")
    command = [sys.executable, "-m", "asyncllm", *args]
    return subprocess.Popen(command, env={**os.environ, **env})


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    click.echo(f"worker stopped with exit status {worker.returncode}")


def _submit_and_print(
    app: AsyncLLM, files: list[Path], request_url: str, timeout: float
) -> int:
    started: dict[str, tuple[str, float]] = {}
    for path in files:
        handle = app.submit(
            json.loads(path.read_text(encoding="utf-8")), tenant_id="demo"
        )
        started[handle.id] = (path.name, time.time())
    raw_id = _send_foreign_message(app, request_url)
    started[raw_id] = ("(raw JSON from another program)", time.time())
    click.echo(f"  {'request':<40} {'latency':>8}  answer")
    failures = 0
    for request_id, (label, begun) in started.items():
        failures += _print_answer(
            AsyncResult(app, request_id, "demo"), label, begun, timeout
        )
    click.echo(f"{len(started) - failures} of {len(started)} requests answered")
    return 0 if failures == 0 else 1


def _send_foreign_message(app: AsyncLLM, request_url: str) -> str:
    """Send a request the way a Go service without asyncllm would write it."""
    request_id = f"go-{int(time.time() * 1000)}"
    body = {
        "ID": request_id,
        "TenantID": "demo",
        "Request": {
            "model": "offline-echo",
            "messages": [
                {"role": "user", "content": "Sent as raw JSON, Go field names."}
            ],
        },
        "Provider": "",
        "Callback": "",
        "CreatedAt": "2026-12-04T10:15:30.123456789Z",
    }
    app.results.mark_queued(request_id, "demo")
    app.broker.send(request_url, json.dumps(body), make_attributes("demo", request_id))
    return request_id


def _print_answer(handle: AsyncResult, label: str, begun: float, timeout: float) -> int:
    """Print one answer with its latency: from submit to the worker's answer."""
    try:
        response = handle.response(timeout=timeout)
    except AsyncLLMError as exc:
        click.echo(f"  {label:<40} no answer: {exc}")
        return 1
    latency = (
        parse_timestamp(response.created_at or now_timestamp()).timestamp() - begun
    )
    if response.error is not None:
        click.echo(f"  {label:<40} {latency:6.2f} s  error: {response.error.message}")
        return 1
    assert response.response is not None
    text = (response.response.content or "").replace("\n", " ")
    click.echo(f"  {label:<40} {latency:6.2f} s  {shorten(text)}")
    return 0


def shorten(text: str, width: int = 60) -> str:
    """Return ``text`` cut to ``width`` characters, ending in "…" when cut.

    Args:
        text: One line of text.
        width: The most characters to return, the ellipsis included.

    Returns:
        The text, or its first ``width - 1`` characters and "…".
    """
    return text if len(text) <= width else text[: width - 1] + "…"
