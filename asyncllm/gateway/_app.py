"""The gateway's ASGI app: submit chat requests over HTTP, look answers up by id.

Every queue and store call blocks (boto3, SQLite), so each runs on a worker
thread and never on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRouter
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .._errors import (
    AsyncLLMError,
    ConfigurationError,
    InvalidMessage,
    PayloadTooLarge,
    TransportError,
)
from .._models import AsyncRequest
from .._results import Status
from .._version import __version__
from .._webhooks import UnsafeWebhookTarget, WebhookSettings, check_webhook_url
from .._wire import _format_location, load_object, nesting_depth
from ._background import CollectorThread
from ._keys import ApiKey, ApiKeys
from ._metrics import GatewayMetrics
from ._schemas import (
    Accepted,
    ErrorBody,
    Health,
    Pending,
    Result,
    chat_request_schema,
)

if TYPE_CHECKING:
    from .._app import AsyncLLM

__all__ = ["DEFAULT_MAX_BODY_BYTES", "GatewayError", "create_gateway"]

logger = logging.getLogger(__name__)

#: The default limit on a POST body: SQS's largest message.
DEFAULT_MAX_BODY_BYTES = 1_048_576
#: How deeply a POST body's JSON may nest.
MAX_JSON_DEPTH = 64
#: Seconds a poller is asked to wait before asking again.
RETRY_AFTER_SECONDS = 1

_DESCRIPTION = """\
Submit OpenAI chat-completions requests to asyncllm's queue and get an id at
once; poll `GET /v1/async/{id}` or give a `callback` URL for a signed webhook.
Every `/v1` call needs `Authorization: Bearer KEY`; the key decides the tenant.
"""


class GatewayError(AsyncLLMError):
    """An HTTP error answer, with the body every gateway error has.

    Args:
        status_code: The HTTP status.
        kind: A short class for ``error.type``, e.g. ``"invalid_request"``.
        message: What went wrong, as a sentence; never prompt text.
        param: The offending field, if one is to blame.
        headers: Extra response headers.
    """

    def __init__(
        self,
        status_code: int,
        kind: str,
        message: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.kind = kind
        self.message = message
        self.param = param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        detail = {"type": self.kind, "message": self.message, "param": self.param}
        return {"error": detail}


@dataclass
class _Gateway:
    """What the routes need, kept on ``api.state.gateway``."""

    app: AsyncLLM
    keys: ApiKeys
    max_body_bytes: int
    webhooks: WebhookSettings
    collect: bool
    readiness_timeout_seconds: float
    metrics: GatewayMetrics | None = None
    collector: CollectorThread | None = None


def create_gateway(
    app: AsyncLLM,
    keys: ApiKeys,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    webhooks: WebhookSettings | None = None,
    collect: bool = True,
    readiness_timeout_seconds: float = 5.0,
    metrics: bool = True,
) -> FastAPI:
    """Build the gateway's ASGI app.

    Serve it with any ASGI server (``asyncllm gateway`` runs uvicorn). While
    it runs, a thread collects responses into the app's result store.

    Args:
        app: The app whose queues and result store to use.
        keys: The API keys accepted, each mapped to its tenant.
        max_body_bytes: The largest POST body accepted; larger ones get 413.
            Defaults to 1 MiB.
        webhooks: The rules callback URLs are checked against at submit
            time. Defaults to `WebhookSettings.from_env`.
        collect: Run the collector inside the gateway. Defaults to True.
        readiness_timeout_seconds: How long ``/readyz`` waits for the queue.
            Defaults to 5.
        metrics: Count and time calls and serve them on ``GET /metrics``
            (Prometheus's format, no key needed, like ``/healthz``).
            Defaults to True.

    Returns:
        A FastAPI app.

    Raises:
        ConfigurationError: ``max_body_bytes`` is not positive.
    """
    if max_body_bytes < 1:
        raise ConfigurationError(f"max_body_bytes={max_body_bytes} must be >= 1")
    api = FastAPI(
        title="asyncllm gateway",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=_lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN; serve the
        # document alone.
        docs_url=None,
        redoc_url=None,
    )
    api.state.gateway = _Gateway(
        app,
        keys,
        max_body_bytes,
        webhooks or WebhookSettings.from_env(),
        collect,
        readiness_timeout_seconds,
        GatewayMetrics() if metrics else None,
    )
    gateway_metrics = api.state.gateway.metrics
    if gateway_metrics is not None:
        api.middleware("http")(gateway_metrics.middleware)
    _install_error_handlers(api)
    api.include_router(_router)
    api.openapi = lambda: _openapi(api)  # type: ignore[method-assign]
    return api


@asynccontextmanager
async def _lifespan(api: FastAPI) -> AsyncIterator[None]:
    gateway: _Gateway = api.state.gateway
    if gateway.collect:
        gateway.collector = CollectorThread(gateway.app)
        gateway.collector.start()
    logger.info("gateway for %s started", gateway.app.name)
    try:
        yield
    finally:
        await _stop_collector(gateway)
        logger.info("gateway for %s stopped", gateway.app.name)


async def _stop_collector(gateway: _Gateway) -> None:
    collector = gateway.collector
    if collector is None:
        return
    timeout = gateway.app.settings.wait_time_seconds + 5.0
    if not await anyio.to_thread.run_sync(collector.stop, timeout):
        logger.warning("gateway collector did not stop within %g s", timeout)


def _state(request: Request) -> _Gateway:
    gateway: _Gateway = request.app.state.gateway
    return gateway


# -- authentication ----------------------------------------------------------

_bearer = HTTPBearer(
    auto_error=False, description="An API key: `Authorization: Bearer KEY`."
)


async def _authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """Return the caller's key entry, or answer 401 (saying nothing about ids)."""
    key = _state(request).keys.find(credentials.credentials) if credentials else None
    if key is None:
        client = request.client.host if request.client else None
        logger.info("gateway refused a call without a valid API key from %s", client)
        raise GatewayError(
            401,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer KEY",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key


Caller = Annotated[ApiKey, Depends(_authenticate)]


# -- routes ------------------------------------------------------------------

_router = APIRouter()


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


_CHAT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/AsyncChatRequest"}
            }
        },
    }
}


@_router.post(
    "/v1/async/chat",
    status_code=202,
    response_model=Accepted,
    responses=_errors(400, 401, 413, 422, 503),
    openapi_extra=_CHAT_BODY,
    summary="Queue a chat-completions request",
)
async def submit_chat(request: Request, caller: Caller) -> JSONResponse:
    """Validate the request, queue it for the caller's tenant, answer its id."""
    gateway = _state(request)
    raw = await _read_body(request, gateway.max_body_bytes)
    fields = _parse_object(raw)
    queued = _build_request(fields, caller.tenant, gateway.webhooks)
    await _send(gateway.app, queued)
    if gateway.metrics is not None:
        gateway.metrics.submitted(caller.tenant)
    status_url = str(request.url_for("get_result", request_id=queued.id))
    body = {"request_id": queued.id, "status": "queued", "status_url": status_url}
    return JSONResponse(body, status_code=202, headers={"Location": status_url})


@_router.get(
    "/v1/async/{request_id}",
    response_model=Result,
    responses={202: {"model": Pending}, **_errors(401, 404, 410, 422, 503)},
    summary="Look a request's answer up",
)
async def get_result(
    request: Request,
    request_id: Annotated[str, Path(min_length=1, max_length=256)],
    caller: Caller,
) -> JSONResponse:
    """Answer 200 with the AsyncResponse once answered, 202 while queued."""
    results = _state(request).app.results
    try:
        record = await run_in_threadpool(results.get, request_id, caller.tenant)
    except AsyncLLMError as exc:
        raise _unavailable("result store", exc) from exc
    if record is None:
        message = f"no request {request_id!r} is known"
        raise GatewayError(404, "not_found", message, "request_id")
    if record.status is Status.EXPIRED:
        message = f"the result of request {request_id!r} has expired"
        raise GatewayError(410, "expired", message, "request_id")
    if record.response is None:
        pending = {"request_id": request_id, "status": record.status.value}
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return JSONResponse(pending, status_code=202, headers=headers)
    return JSONResponse({"status": record.status.value, **record.response.to_wire()})


@_router.get(
    "/healthz",
    response_model=Health,
    response_model_exclude_none=True,
    summary="The process is alive",
)
async def healthz() -> dict[str, str]:
    """Answer 200 while the process serves."""
    return {"status": "ok"}


@_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Serve the gateway's metrics in Prometheus's text format (404 if off)."""
    gateway_metrics = _state(request).metrics
    if gateway_metrics is None:
        raise GatewayError(404, "not_found", "metrics are off for this gateway")
    body, content_type = gateway_metrics.exposition()
    return Response(body, media_type=content_type)


@_router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health}},
    summary="The request queue is reachable",
)
async def readyz(request: Request) -> JSONResponse:
    """Answer 200 when the request queue answers GetQueueAttributes, else 503."""
    reason = await _unready_reason(_state(request))
    if reason is not None:
        body = {"status": "unavailable", "reason": reason}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok"})


# -- submitting --------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the raw body, refusing it (413) as soon as it passes ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    message = f"the body is larger than this gateway accepts ({limit:,} bytes)"
    return GatewayError(413, "payload_too_large", message)


def _parse_object(raw: bytes) -> dict[str, Any]:
    """Parse the body as one JSON object (400 otherwise)."""
    try:
        data = load_object(raw, check_unicode=False)
    except InvalidMessage as exc:
        raise GatewayError(400, "invalid_json", f"the {exc.reason}") from None
    if nesting_depth(data) > MAX_JSON_DEPTH:
        message = f"the body nests deeper than {MAX_JSON_DEPTH} levels"
        raise GatewayError(400, "invalid_json", message)
    return data


def _build_request(
    fields: dict[str, Any], tenant: str, webhooks: WebhookSettings
) -> AsyncRequest:
    """Split off provider and callback, validate, and check the callback URL."""
    chat = dict(fields)
    routing = {
        name: chat.pop(name) for name in ("provider", "callback") if name in chat
    }
    try:
        request = AsyncRequest.model_validate(
            {"tenant_id": tenant, "request": chat, **routing}
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    if request.callback is not None:
        try:
            check_webhook_url(request.callback, webhooks)
        except UnsafeWebhookTarget as exc:
            message = f"callback refused: {exc.reason}"
            raise GatewayError(422, "invalid_request", message, "callback") from None
    return request


def _invalid(exc: ValidationError) -> GatewayError:
    """A 422 naming each bad field of the body (up to three) and the first."""
    errors = exc.errors(include_url=False)
    parts = [f"{_param(error['loc']) or 'body'}: {error['msg']}" for error in errors]
    if len(parts) > 3:
        parts = [*parts[:3], f"and {len(parts) - 3} more"]
    return GatewayError(
        422, "invalid_request", "; ".join(parts), _param(errors[0]["loc"])
    )


def _param(location: tuple[int | str, ...]) -> str | None:
    """A body field's name as the caller wrote it (without our ``request.``)."""
    if location[:1] == ("request",):
        location = location[1:]
    return _format_location(location) or None


async def _send(app: AsyncLLM, request: AsyncRequest) -> None:
    try:
        await run_in_threadpool(app.send_request, request)
    except PayloadTooLarge as exc:
        raise GatewayError(413, "payload_too_large", exc.reason) from None
    except InvalidMessage as exc:
        raise GatewayError(422, "invalid_request", exc.reason) from None
    except TransportError as exc:
        raise _unavailable("request queue", exc) from exc


def _unavailable(what: str, exc: Exception) -> GatewayError:
    logger.warning("gateway: the %s failed: %s", what, exc)
    message = f"the {what} is unavailable; try again later"
    return GatewayError(503, "unavailable", message, headers={"Retry-After": "5"})


# -- readiness ---------------------------------------------------------------


async def _unready_reason(gateway: _Gateway) -> str | None:
    """Why the gateway is not ready, or None when it is."""
    if gateway.collector is not None and not gateway.collector.alive:
        return "the collector is not running"
    with anyio.move_on_after(gateway.readiness_timeout_seconds):
        try:
            await anyio.to_thread.run_sync(
                _probe_queue, gateway.app, abandon_on_cancel=True
            )
        except AsyncLLMError as exc:
            logger.warning("gateway not ready: request queue: %s", exc)
            return "the request queue is unreachable"
        return None
    return "the request queue did not answer in time"


def _probe_queue(app: AsyncLLM) -> None:
    """Call GetQueueAttributes on the request queue."""
    app.broker.get_attributes(app.broker.queue_url(app.settings.request_queue))


# -- errors and the OpenAPI document -----------------------------------------


def _install_error_handlers(api: FastAPI) -> None:
    api.add_exception_handler(GatewayError, _gateway_error)
    api.add_exception_handler(RequestValidationError, _request_invalid)
    api.add_exception_handler(HTTPException, _http_error)


async def _gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    location = tuple(errors[0]["loc"])[1:] if errors else ()
    param = _format_location(location) or None
    message = "; ".join(
        f"{_format_location(tuple(e['loc'])[1:]) or 'request'}: {e['msg']}"
        for e in errors[:3]
    )
    error = GatewayError(422, "invalid_request", message, param)
    return await _gateway_error(request, error)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kinds = {404: "not_found", 405: "method_not_allowed"}
    kind = kinds.get(exc.status_code, "http_error")
    error = GatewayError(exc.status_code, kind, str(exc.detail), None, exc.headers)
    return await _gateway_error(request, error)


def _openapi(api: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the POST body's schema (the route reads raw bytes)."""
    if api.openapi_schema is None:
        document = get_openapi(
            title=api.title,
            version=api.version,
            description=api.description,
            routes=api.routes,
        )
        body, definitions = chat_request_schema()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(definitions)
        schemas["AsyncChatRequest"] = body
        api.openapi_schema = document
    return api.openapi_schema
