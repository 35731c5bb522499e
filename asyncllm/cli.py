"""The ``asyncllm`` command line.

Exit statuses of ``submit --wait`` and ``result``:

====  =====================================================
0     the request completed; the response is printed
1     asyncllm could not do its work (settings, queues, network)
2     the command line was wrong
3     the request failed; the error response is printed
4     the request is queued but not answered yet
5     no request with that id is known
6     the result was kept longer than its TTL and is gone
====  =====================================================
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError

from ._app import AsyncLLM
from ._errors import (
    AsyncLLMError,
    ConfigurationError,
    InvalidMessage,
    ResultExpired,
    ResultNotFound,
    ResultTimeout,
)
from ._logging import configure_logging
from ._metrics import Metrics
from ._models import AsyncRequest, AsyncResponse
from ._queues import QueueOptions, QueueSetup
from ._results import Status
from ._version import __version__
from ._wire import describe_validation_error

if TYPE_CHECKING:
    from ._ops import DeadLetter

__all__ = [
    "EXIT_EXPIRED",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_PENDING",
    "cli",
    "load_app",
    "main",
]

EXIT_FAILED = 3
EXIT_PENDING = 4
EXIT_NOT_FOUND = 5
EXIT_EXPIRED = 6

F = TypeVar("F", bound=Callable[..., Any])

#: The longest tenant id a request may carry (AsyncRequest.tenant_id).
_MAX_TENANT_LENGTH = 256


def load_app(path: str | None) -> AsyncLLM:
    """Import an app from ``package.module:attribute`` (``:app`` is the default).

    With no path, an app is built from the environment alone. The working
    directory is importable, as with ``python -m``.

    Raises:
        click.BadParameter: The module or attribute cannot be found.
    """
    if not path:
        return AsyncLLM()
    module_name, _, attribute = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        message = f"cannot import {module_name!r}: {exc}"
        raise click.BadParameter(message, param_hint="'-A'") from exc
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, AsyncLLM):
        message = f"{path!r} is not an AsyncLLM app (expected module:attribute)"
        raise click.BadParameter(message, param_hint="'-A'")
    return app


def app_option(func: F) -> F:
    """Add the ``-A/--app`` option, which also reads ``ASYNCLLM_APP``."""
    option = click.option(
        "-A",
        "--app",
        "app_path",
        envvar="ASYNCLLM_APP",
        metavar="MODULE:ATTR",
        help="The app to use, e.g. myproject.tasks:app [env: ASYNCLLM_APP].",
    )
    return option(func)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the whole AsyncResponse as JSON."
)


def _check_tenant(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Refuse a blank or over-long tenant, which the request would refuse later."""
    if value is not None and not value.strip():
        message = (
            f"{value!r} is blank; give a tenant id, or leave the option out to "
            "use ASYNCLLM_TENANT_ID or 'default'"
        )
        raise click.BadParameter(message)
    if value is not None and len(value) > _MAX_TENANT_LENGTH:
        message = (
            f"{value[:20]!r}... is {len(value)} characters long; "
            f"use at most {_MAX_TENANT_LENGTH}"
        )
        raise click.BadParameter(message)
    return value


tenant_option = click.option(
    "-t",
    "--tenant",
    callback=_check_tenant,
    help="The tenant [default: ASYNCLLM_TENANT_ID or 'default'].",
)


def _check_callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Refuse a callback that is not an http(s) URL, as the request would."""
    if value is not None and not re.match(r"^https?://[^\s/]+", value):
        message = (
            f"{value!r} is not an http(s) URL; "
            "use e.g. https://hooks.example.com/asyncllm"
        )
        raise click.BadParameter(message)
    return value


def _check_handler(
    app: AsyncLLM, app_path: str | None, name: str | None, hint: str
) -> None:
    """Refuse a handler the app given with -A does not have.

    Without -A, or with an app that registers no handlers, the handlers are
    not known here and the worker decides.
    """
    known = sorted(app.handlers)
    if not app_path or not known or name is None or name in known:
        return
    message = f"{name!r} is not a handler of {app_path}; use one of: {', '.join(known)}"
    raise click.BadParameter(message, param_hint=hint)


class _AtDebug(logging.Filter):
    """Logs a logger's INFO lines at DEBUG instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def _per_request_logs_at_debug() -> Iterator[None]:
    """Log "request ... queued" at DEBUG: the id is on stdout already.

    A line on standard error for every submit is noise in scripts; with
    ``--log-level DEBUG`` the lines are still there.
    """
    source = logging.getLogger("asyncllm._app")
    demote = _AtDebug()
    source.addFilter(demote)
    try:
        yield
    finally:
        source.removeFilter(demote)


class _Group(click.Group):
    """Turns asyncllm's own errors into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AsyncLLMError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="asyncllm")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="How much to log, on standard error.",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    envvar="ASYNCLLM_LOG_FORMAT",
    help="Text lines, or one JSON object per line [env: ASYNCLLM_LOG_FORMAT].",
)
@click.option(
    "--log-payloads",
    is_flag=True,
    envvar="ASYNCLLM_LOG_PAYLOADS",
    help="At DEBUG, also log request and response bodies (prompt text).",
)
@click.pass_context
def cli(
    ctx: click.Context, log_level: str, log_format: str, log_payloads: bool
) -> None:
    """Asynchronous LLM requests on AWS SQS."""
    ctx.obj = {
        "log_level": log_level,
        "log_format": log_format,
        "log_payloads": log_payloads,
    }
    configure_logging(log_level, log_format)


@cli.command()
@app_option
@click.option(
    "-c", "--concurrency", default=10, show_default=True, type=click.IntRange(1)
)
@click.option(
    "--grace-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="On SIGTERM/SIGINT, how long running calls may finish.",
)
@click.option(
    "--wait-time-seconds",
    type=click.IntRange(0, 20),
    help="Long-poll wait of each receive [default: from settings, 20].",
)
@click.option(
    "--retry-backoff-seconds",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Delay before the second attempt; doubles after that.",
)
@click.option(
    "--receivers",
    type=click.IntRange(1, 50),
    help=(
        "Most ReceiveMessage calls in flight; extra ones poll only while "
        "there is a backlog [default: one per 10 of --concurrency, at most 10]."
    ),
)
@click.option(
    "-p",
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Worker processes, for handlers that use the CPU.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help=(
        "Serve Prometheus metrics on this port (0 picks one); "
        "with --processes, child i uses PORT+i."
    ),
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="The address the metrics server binds.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    app_path: str | None,
    concurrency: int,
    grace_seconds: float,
    wait_time_seconds: int | None,
    retry_backoff_seconds: float,
    receivers: int | None,
    processes: int,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run handlers for the requests on the request queue.

    SIGTERM or SIGINT stops receiving at once, releases what was received but
    not started, and lets running calls finish within --grace-seconds; a
    second signal releases them at once. The exit status is 0.
    """
    if not app_path:
        raise click.UsageError("the worker needs an app: -A package.module:app")
    if processes > 1:
        from ._supervisor import supervise

        child_args = ["--log-level", ctx.obj["log_level"]]
        child_args += ["--log-format", ctx.obj["log_format"]]
        if ctx.obj["log_payloads"]:
            child_args.append("--log-payloads")
        child_args += ["worker", "-A", app_path]
        child_args += ["--concurrency", str(concurrency)]
        child_args += ["--grace-seconds", str(grace_seconds)]
        child_args += ["--retry-backoff-seconds", str(retry_backoff_seconds)]
        if wait_time_seconds is not None:
            child_args += ["--wait-time-seconds", str(wait_time_seconds)]
        if receivers is not None:
            child_args += ["--receivers", str(receivers)]
        child_args += ["--metrics-host", metrics_host]
        sys.exit(supervise(child_args, processes, _metrics_port_of(metrics_port)))
    app = load_app(app_path)
    runner = app.worker(
        concurrency=concurrency,
        grace_seconds=grace_seconds,
        wait_time_seconds=wait_time_seconds,
        retry_backoff_seconds=retry_backoff_seconds,
        receivers=receivers,
        metrics=_serve_metrics(app, metrics_port, metrics_host),
        log_payloads=ctx.obj["log_payloads"],
    )
    sys.exit(runner.run())


def _metrics_port_of(port: int | None) -> Callable[[int], list[str]]:
    """Child ``i`` of ``--processes`` serves metrics on ``port + i``."""

    def arguments(index: int) -> list[str]:
        if port is None:
            return []
        return ["--metrics-port", str(port + index if port else 0)]

    return arguments


def _serve_metrics(app: AsyncLLM, port: int | None, host: str) -> Metrics | None:
    if port is None:
        return None
    from ._metrics import PrometheusMetrics

    metrics = PrometheusMetrics(sorted(app.handlers))
    bound = metrics.serve(port, host)
    logging.getLogger(__name__).info("metrics on http://%s:%d/metrics", host, bound)
    return metrics


@cli.group()
def queues() -> None:
    """Provision and inspect the queues."""


@queues.command("create")
@app_option
@click.option(
    "--visibility-timeout",
    default=300,
    show_default=True,
    type=click.IntRange(0, 43_200),
)
@click.option(
    "--retention-seconds",
    default=345_600,
    show_default=True,
    type=click.IntRange(60, 1_209_600),
)
@click.option(
    "--receive-wait-seconds", default=20, show_default=True, type=click.IntRange(0, 20)
)
@click.option(
    "--max-receive-count", default=3, show_default=True, type=click.IntRange(1, 1000)
)
def queues_create(
    app_path: str | None,
    visibility_timeout: int,
    retention_seconds: int,
    receive_wait_seconds: int,
    max_receive_count: int,
) -> None:
    """Create the request, response and dead-letter queues if missing."""
    options = QueueOptions(
        visibility_timeout=visibility_timeout,
        retention_seconds=retention_seconds,
        receive_wait_seconds=receive_wait_seconds,
        max_receive_count=max_receive_count,
    )
    app = load_app(app_path)
    setup = app.create_queues(options)
    table = _dynamodb_table(app)
    if table is not None:
        from ._dynamodb import create_results_table

        create_results_table(app.settings, table)
        click.echo(f"result table:      {table}")
    click.echo(f"request queue:     {setup.request_url}")
    click.echo(f"response queue:    {setup.response_url}")
    click.echo(f"dead-letter queue: {setup.dead_letter_url}")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@queues.command("status")
@app_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the queues as a JSON list."
)
def queues_status(app_path: str | None, as_json: bool) -> None:
    """Show what each queue holds and where its settings differ from ours."""
    from ._ops import cloudwatch_oldest_age, queue_status

    app = load_app(app_path)
    setup = app.check_queues()
    age = (
        cloudwatch_oldest_age(app.settings) if app.settings.transport == "sqs" else None
    )
    rows = queue_status(app.broker, setup, age)
    if as_json:
        click.echo(json.dumps([row.__dict__ for row in rows], default=list))
        return
    click.echo(
        f"{'queue':<13} {'visible':>8} {'in flight':>10} {'delayed':>8} {'oldest':>8}"
    )
    for row in rows:
        click.echo(
            f"{row.role:<13} {row.visible:>8} {row.in_flight:>10} {row.delayed:>8} "
            f"{_age(row.oldest_age_seconds):>8}"
        )
    for row in rows:
        for warning in row.warnings:
            click.echo(f"warning: {row.role}: {warning}")
    click.echo(f"max receives before the dead-letter queue: {setup.max_receive_count}")


@queues.command("purge")
@app_option
@click.argument("queue", type=click.Choice(["requests", "responses", "dead-letters"]))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def queues_purge(app_path: str | None, queue: str, yes: bool) -> None:
    """Delete every message of QUEUE (requests, responses or dead-letters)."""
    app = load_app(app_path)
    setup = app.check_queues()
    urls = {
        "requests": setup.request_url,
        "responses": setup.response_url,
        "dead-letters": setup.dead_letter_url,
    }
    if not yes:
        click.confirm(f"Delete every message of {urls[queue]}?", abort=True)
    app.broker.purge(urls[queue])
    click.echo(f"purged {urls[queue]}")


@cli.group()
def dlq() -> None:
    """Inspect the dead-letter queue and send requests back."""


def _matching(
    letters: list[Any], tenant: str | None, reason: str | None, ids: tuple[str, ...]
) -> list[Any]:
    return [
        letter
        for letter in letters
        if (tenant is None or letter.tenant_id == tenant)
        and (reason is None or reason.lower() in letter.reason.lower())
        and (not ids or letter.request_id in ids)
    ]


@dlq.command("list")
@app_option
@click.option("-t", "--tenant", help="Only this tenant's requests.")
@click.option("--reason", help="Only reasons containing this text.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--show-body", is_flag=True, help="Also print the bodies (prompt text).")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per dead letter, one a line.",
)
def dlq_list(
    app_path: str | None,
    tenant: str | None,
    reason: str | None,
    limit: int,
    show_body: bool,
    as_json: bool,
) -> None:
    """List dead-lettered requests: id, tenant, attempts, age and reason."""
    from ._ops import release

    app, _, letters = _read_dead_letters(app_path, limit)
    try:
        for letter in _matching(letters, tenant, reason, ()):
            line = letter.summary(show_body)
            if as_json:
                click.echo(json.dumps(line, ensure_ascii=False))
            else:
                click.echo(
                    f"{line['request_id'] or '-'}  {line['tenant_id'] or '-'}  "
                    f"attempts={line['attempts']}  age={_age(letter.age_seconds)}  "
                    f"{line['reason']}" + (f"\n    {line['body']}" if show_body else "")
                )
    finally:
        release(app.broker, letters)


def _read_dead_letters(
    app_path: str | None, limit: int
) -> tuple[AsyncLLM, QueueSetup, list[DeadLetter]]:
    """Load the app, check its queues and read up to ``limit`` dead letters.

    The letters stay hidden until passed to `release` (or moved).
    """
    from ._ops import dead_letters

    app = load_app(app_path)
    setup = app.check_queues()
    letters = dead_letters(
        app.broker,
        setup.dead_letter_url,
        limit,
        max_receive_count=setup.max_receive_count,
    )
    return app, setup, letters


@dlq.command("redrive")
@app_option
@click.option("-t", "--tenant", help="Only this tenant's requests.")
@click.option("--id", "ids", multiple=True, help="Only this request id (repeatable).")
@click.option(
    "--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000)
)
@click.option("--dry-run", is_flag=True, help="Show what would move, move nothing.")
def dlq_redrive(
    app_path: str | None,
    tenant: str | None,
    ids: tuple[str, ...],
    limit: int,
    dry_run: bool,
) -> None:
    """Send dead-lettered requests back to the request queue, attempts reset."""
    from ._ops import redrive, release

    app, setup, letters = _read_dead_letters(app_path, limit)
    chosen = _matching(letters, tenant, None, ids)
    try:
        for letter in chosen:
            if not dry_run:
                redrive(app.broker, setup.request_url, letter)
            click.echo(
                f"{'would move' if dry_run else 'moved'} {letter.request_id or '-'} "
                f"({letter.tenant_id or '-'}): {letter.reason}"
            )
    finally:
        moved = set() if dry_run else {id(letter) for letter in chosen}
        release(app.broker, [x for x in letters if id(x) not in moved])
    verb = "would move" if dry_run else "moved"
    click.echo(f"{len(chosen)} of {len(letters)} dead letters {verb}")


@cli.command()
@app_option
@click.argument("file", type=click.File("r", encoding="utf-8"))
@tenant_option
@click.option(
    "--handler",
    help="The handler to run [default: the app's default]; checked against -A.",
)
@click.option("--provider", help="A provider or route for the handler.")
@click.option(
    "--callback",
    callback=_check_callback,
    help="An http(s) URL to notify when the request completes.",
)
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(0),
    help="Wait up to this many seconds and print the response.",
)
@json_option
def submit(
    app_path: str | None,
    file: Any,
    tenant: str | None,
    handler: str | None,
    provider: str | None,
    callback: str | None,
    wait_seconds: float | None,
    as_json: bool,
) -> None:
    """Queue the chat request in FILE (a path, or - for standard input).

    FILE holds either a chat-completions request (with "model" and
    "messages") or a whole AsyncRequest (with "tenant_id" and "request").
    Prints the request id.
    """
    app = load_app(app_path)
    _check_handler(app, app_path, handler, "'--handler'")
    data = _read_json(file)
    try:
        if "request" in data:
            request = _as_async_request(data, tenant, handler, provider, callback)
            _check_handler(app, app_path, request.handler, "FILE")
            with _per_request_logs_at_debug():
                result = app.send_request(request)
        else:
            with _per_request_logs_at_debug():
                result = app.submit(
                    data,
                    tenant_id=tenant,
                    handler=handler,
                    provider=provider,
                    callback=callback,
                )
    except InvalidMessage as exc:
        # A request that cannot be queued is a bad FILE: exit status 2.
        raise click.BadParameter(exc.reason, param_hint="FILE") from None
    click.echo(result.id)
    if wait_seconds is not None:
        _print_result(app, result.id, result.tenant_id, wait_seconds, as_json)


def _read_json(file: Any) -> dict[str, Any]:
    try:
        data = json.load(file)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="FILE") from None
    except UnicodeDecodeError as exc:
        message = (
            f"{click.format_filename(file.name)!r} is not UTF-8 text "
            f"(byte 0x{exc.object[exc.start]:02x}: {exc.reason}); save it as UTF-8"
        )
        raise click.BadParameter(message, param_hint="FILE") from None
    if not isinstance(data, dict):
        raise click.BadParameter("expected a JSON object", param_hint="FILE")
    return data


def _as_async_request(
    data: dict[str, Any],
    tenant: str | None,
    handler: str | None,
    provider: str | None,
    callback: str | None,
) -> AsyncRequest:
    overrides = {
        "tenant_id": tenant,
        "handler": handler,
        "provider": provider,
        "callback": callback,
    }
    fields = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return AsyncRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidMessage(describe_validation_error(exc)) from None


@cli.command()
@app_option
@click.argument("request_id")
@click.option(
    "-t", "--tenant", help="Only find the request if it belongs to this tenant."
)
@click.option(
    "--wait",
    "wait_seconds",
    default=0.0,
    type=click.FloatRange(0),
    help="Wait up to this many seconds for the answer.",
)
@json_option
def result(
    app_path: str | None,
    request_id: str,
    tenant: str | None,
    wait_seconds: float,
    as_json: bool,
) -> None:
    """Print the answer to REQUEST_ID: its text, or with --json the whole response.

    Exit status: 0 completed, 3 failed, 4 not answered yet, 5 not found,
    6 expired.
    """
    _print_result(load_app(app_path), request_id, tenant, wait_seconds, as_json)


def _print_result(
    app: AsyncLLM, request_id: str, tenant: str | None, wait: float, as_json: bool
) -> None:
    try:
        response = app.get_result(request_id, tenant_id=tenant, timeout=wait)
    except ResultNotFound:
        _print_status(
            request_id, Status.NOT_FOUND, "no request with this id is known", as_json
        )
        sys.exit(EXIT_NOT_FOUND)
    except ResultExpired:
        _print_status(request_id, Status.EXPIRED, "the result has expired", as_json)
        sys.exit(EXIT_EXPIRED)
    except ResultTimeout:
        _print_status(request_id, Status.QUEUED, "not answered yet", as_json)
        sys.exit(EXIT_PENDING)
    status = Status.COMPLETED if response.ok else Status.FAILED
    if as_json:
        body = {"status": status.value, **response.to_wire()}
        click.echo(json.dumps(body, ensure_ascii=False))
    else:
        click.echo(_response_text(response))
    if not response.ok:
        sys.exit(EXIT_FAILED)


def _print_status(request_id: str, status: Status, text: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"request_id": request_id, "status": status.value}))
    else:
        click.echo(f"{status.value}: {text} ({request_id})")


def _response_text(response: AsyncResponse) -> str:
    """The answer's text, or the message as JSON when it has no plain text."""
    if response.error is not None:
        return f"failed: {response.error.type}: {response.error.message}"
    assert response.response is not None
    if response.response.content is not None:
        return response.response.content
    choices = [choice.to_wire() for choice in response.response.choices]
    return json.dumps(choices, ensure_ascii=False, indent=2)


@cli.group()
def results() -> None:
    """Inspect and provision the result store."""


@results.command("stats")
@app_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the counts as one JSON object."
)
def results_stats(app_path: str | None, as_json: bool) -> None:
    """Read new responses, then count the stored results per status."""
    app = load_app(app_path)
    app.collect()
    counts = {status.value: count for status, count in app.results.stats().items()}
    if as_json:
        click.echo(json.dumps(counts))
        return
    for status, count in counts.items():
        click.echo(f"{status:<10} {count:>8}")


@results.command("create")
@app_option
def results_create(app_path: str | None) -> None:
    """Create the DynamoDB table of a dynamodb://TABLE result store."""
    app = load_app(app_path)
    table = _dynamodb_table(app)
    if table is None:
        message = f"the result store {app.settings.result_store!r} needs no creating"
        raise click.UsageError(message)
    from ._dynamodb import create_results_table

    created = create_results_table(app.settings, table)
    click.echo(f"table {table} {'created' if created else 'already exists'}")


def _dynamodb_table(app: AsyncLLM) -> str | None:
    url = app.settings.result_store
    return url.split("://", 1)[1] if url.startswith("dynamodb://") else None


@cli.command()
@app_option
def collect(app_path: str | None) -> None:
    """Move responses from the response queue into the result store, until stopped."""
    sys.exit(load_app(app_path).collector.run())


@cli.command()
@click.argument("which", type=click.Choice(["request", "response"]), default="request")
def schema(which: str) -> None:
    """Print the JSON Schema of the request or response message."""
    from ._schema import message_schema

    click.echo(json.dumps(message_schema(which), indent=2))


@cli.command("local-sqs")
@click.option("--port", default=9324, show_default=True, type=click.IntRange(0, 65535))
def local_sqs(port: int) -> None:
    """Run a local SQS endpoint on 127.0.0.1 until interrupted."""
    import threading

    from ._local import LocalSQS, PortInUse

    try:
        sqs = LocalSQS(port).start()
    except PortInUse as exc:
        message = f"{exc}; pick another with --port (--port 0 picks a free one)"
        raise ConfigurationError(message) from None
    try:
        click.echo(f"export ASYNCLLM_SQS_ENDPOINT_URL={sqs.endpoint_url}")
        click.echo(
            "# then: asyncllm queues create; Ctrl-C stops the endpoint", err=True
        )
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    finally:
        sqs.stop()


@cli.command()
@click.option(
    "--app",
    "app_path",
    default="examples.offline.app:app",
    show_default=True,
    help="The app the demo worker runs.",
)
@click.option(
    "--requests",
    "requests_dir",
    default="examples/requests",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A folder of chat-request JSON files to submit.",
)
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1))
def demo(app_path: str, requests_dir: Path, timeout: float) -> None:
    """Run the whole flow on this machine: local SQS, a worker, requests, answers."""
    from ._demo import run_demo

    if logging.getLogger().level >= logging.INFO:
        logging.getLogger("asyncllm").setLevel(logging.WARNING)
    sys.exit(run_demo(app_path, requests_dir, timeout))


def main() -> None:
    """Run the command line (the ``asyncllm`` console script)."""
    cli(prog_name="asyncllm")


@cli.group()
def batch() -> None:
    """Push files in OpenAI's Batch format through the queues."""


@batch.command("submit")
@app_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-m",
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The manifest to write or resume [default: FILE.manifest.jsonl].",
)
@tenant_option
@click.option(
    "--skip-invalid", is_flag=True, help="Send the valid lines of a file with bad ones."
)
def batch_submit(
    app_path: str | None,
    file: Path,
    manifest_path: Path | None,
    tenant: str | None,
    skip_invalid: bool,
) -> None:
    """Validate FILE.jsonl, then queue its requests and record them in a manifest.

    A bad line (not JSON, a duplicate custom_id, a url other than
    /v1/chat/completions, an invalid body) is reported by its number and,
    without --skip-invalid, nothing is sent. Running the command again with
    the same manifest sends only the lines that were not sent yet.
    """
    from ._batch import Manifest, parse_batch_file

    with file.open(encoding="utf-8") as stream:
        parsed = parse_batch_file(stream)
    for problem in parsed.problems:
        click.echo(f"{file}: {problem}", err=True)
    if parsed.problems and not skip_invalid:
        click.echo(f"{len(parsed.problems)} bad lines; nothing sent", err=True)
        sys.exit(2)
    app = load_app(app_path)
    manifest = Manifest(manifest_path or file.with_name(file.name + ".manifest.jsonl"))
    if not manifest.header:
        manifest.start(file, tenant or app.settings.default_tenant, len(parsed.lines))
    todo = [line for line in parsed.lines if line.line not in manifest.sent]
    with click.progressbar(length=len(todo), label="sending", file=sys.stderr) as bar:
        for start in range(0, len(todo), 10):
            chunk = todo[start : start + 10]
            with _per_request_logs_at_debug():
                app.send_requests(manifest.requests(chunk))
            manifest.record(chunk)
            bar.update(len(chunk))
    click.echo(
        f"{manifest.batch_id}: sent {len(todo)}, already sent "
        f"{len(parsed.lines) - len(todo)}, skipped {len(parsed.problems)} bad lines; "
        f"manifest {manifest.path}"
    )


@batch.command("wait")
@app_option
@click.argument(
    "manifest_path", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--timeout", type=click.FloatRange(0), help="Give up after this many seconds."
)
def batch_wait(
    app_path: str | None, manifest_path: Path, timeout: float | None
) -> None:
    """Wait until every request of a batch is answered, showing progress.

    Exit status 0 when all are answered, 4 when the timeout came first.
    """
    import time

    from ._batch import Manifest, statuses

    app = load_app(app_path)
    manifest = Manifest(manifest_path)
    total = len(manifest.sent)
    deadline = None if timeout is None else time.monotonic() + timeout
    with click.progressbar(length=total, label="answered", file=sys.stderr) as bar:
        done = 0
        while True:
            counts = statuses(manifest, app.results)
            now_done = counts[Status.COMPLETED] + counts[Status.FAILED]
            bar.update(now_done - done)
            done = now_done
            if done >= total or (deadline is not None and time.monotonic() > deadline):
                break
            app.collect(wait_seconds=1)
    summary = ", ".join(
        f"{status.value} {count}" for status, count in counts.items() if count
    )
    click.echo(f"{manifest.batch_id}: {summary or 'empty'}")
    if done < total:
        sys.exit(EXIT_PENDING)


@batch.command("results")
@app_option
@click.argument(
    "manifest_path", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the successful lines.",
)
@click.option(
    "-e",
    "--errors",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the failed lines [default: OUTPUT with .errors.jsonl].",
)
def batch_results(
    app_path: str | None, manifest_path: Path, output: Path, errors: Path | None
) -> None:
    """Write a batch's answers in OpenAI's output format, in input order.

    Failed and unanswered requests go to the errors file, never the output.
    """
    from ._batch import Manifest, output_lines

    app = load_app(app_path)
    app.collect()
    manifest = Manifest(manifest_path)
    errors = errors or output.with_name(output.stem + ".errors.jsonl")
    counts = [0, 0]
    with (
        output.open("w", encoding="utf-8") as good,
        errors.open("w", encoding="utf-8") as bad,
    ):
        for ok, line in output_lines(manifest, app.results):
            (good if ok else bad).write(json.dumps(line, ensure_ascii=False) + "\n")
            counts[0 if ok else 1] += 1
    click.echo(f"{counts[0]} answers in {output}, {counts[1]} errors in {errors}")


@cli.command()
@app_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on; 0.0.0.0 listens on every interface.",
)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--keys",
    "keys_path",
    envvar="ASYNCLLM_GATEWAY_KEYS_FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON file of API key digests and their tenants "
    "[env: ASYNCLLM_GATEWAY_KEYS_FILE; else the JSON in ASYNCLLM_GATEWAY_KEYS].",
)
@click.option(
    "--max-body-bytes",
    default=1_048_576,
    show_default=True,
    type=click.IntRange(1),
    help="The largest request body accepted; larger ones get 413.",
)
@click.option(
    "--metrics/--no-metrics",
    default=True,
    show_default=True,
    help="Serve Prometheus metrics on GET /metrics.",
)
def gateway(
    app_path: str | None,
    host: str,
    port: int,
    keys_path: Path | None,
    max_body_bytes: int,
    metrics: bool,
) -> None:
    """Serve the HTTP gateway: POST /v1/async/chat, GET /v1/async/{id}.

    The collector runs inside it, so lookups see answers as they arrive.
    Needs the gateway extra: pip install 'asyncllm[gateway]'.

    \b
    Examples:
      asyncllm gateway -A myapp:app --keys keys.json
      asyncllm gateway --port 9000 --keys keys.json   # app from the environment
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    try:
        import uvicorn

        from .gateway import ApiKeys, create_gateway
    except ImportError as exc:
        message = f"the gateway needs pip install 'asyncllm[gateway]' ({exc})"
        raise click.UsageError(message) from None
    keys = ApiKeys.from_file(keys_path) if keys_path else ApiKeys.from_env()
    api = create_gateway(
        load_app(app_path), keys, max_body_bytes=max_body_bytes, metrics=metrics
    )
    uvicorn.run(api, host=host, port=port, log_config=None, server_header=False)
