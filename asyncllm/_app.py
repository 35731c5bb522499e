"""The app: handler registry, submitting requests and looking results up."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._broker import Broker, Outgoing, make_broker
from ._collector import Collector
from ._config import Settings
from ._errors import (
    ConfigurationError,
    InvalidMessage,
    RequestFailed,
    ResultExpired,
    ResultNotFound,
    ResultTimeout,
    TransportError,
    UnknownHandler,
)
from ._ledger import Ledger, open_ledger
from ._models import AsyncRequest, AsyncResponse, ChatRequest, ChatResponse
from ._queues import QueueOptions, QueueSetup, check_queues, create_queues
from ._results import ResultStore, Status, open_result_store
from ._wire import (
    SQS_MAX_MESSAGE_BYTES,
    check_size,
    encode,
    encoded_size,
    make_attributes,
)

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["AsyncLLM", "AsyncResult", "Handler"]

logger = logging.getLogger(__name__)

HandlerResult = ChatResponse | Mapping[str, Any]
HandlerFunc = Callable[[AsyncRequest], HandlerResult | Awaitable[HandlerResult]]
F = TypeVar("F", bound=HandlerFunc)

#: How many response batches one lookup pass reads at most before re-checking.
_COLLECT_BATCHES = 50


@dataclass(frozen=True)
class Handler:
    """A registered handler.

    Attributes:
        name: The name requests use to pick it.
        func: The decorated function or coroutine function.
        timeout_seconds: How long one call may run before it counts as failed.
    """

    name: str
    func: HandlerFunc
    timeout_seconds: float

    @property
    def is_async(self) -> bool:
        """True for an ``async def`` handler, which runs on the event loop."""
        return inspect.iscoroutinefunction(self.func)


class AsyncLLM:
    """An asyncllm application: handlers, queues and a result store.

    Settings come from the environment (see `Settings.from_env`) unless given
    here. Handlers are registered with `handler`; `submit` queues a chat
    request and returns an `AsyncResult`; a worker (``asyncllm worker -A
    module:app``) runs the handlers.

    Args:
        name: A label for logs. Defaults to ``"asyncllm"``.
        settings: Complete settings; when given, the keyword overrides must
            be left out.
        **overrides: Individual settings (``broker_url``, ``endpoint_url``,
            ``region``, ``request_queue``, ``response_queue``,
            ``dead_letter_queue``, ``result_store``, ``default_tenant``,
            ``wait_time_seconds``) that win over the environment.

    Example:
        >>> app = AsyncLLM(broker_url="memory://", result_store="memory://")
        >>> @app.handler(default=True)
        ... def echo(request):
        ...     text = request.request.messages[-1].content
        ...     return ChatResponse.from_text(text, model="echo")
    """

    def __init__(
        self,
        name: str = "asyncllm",
        *,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        if settings is not None and overrides:
            raise ConfigurationError(
                "pass either settings or keyword settings, not both"
            )
        self.name = name
        self.settings = settings or Settings.from_env(**overrides)
        self._handlers: dict[str, Handler] = {}
        self._default: str | None = None
        self._broker: Broker | None = None
        self._results: ResultStore | None = None
        self._ledger: Ledger | None = None
        self._collector: Collector | None = None
        self._max_bytes: dict[str, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<AsyncLLM {self.name!r} {self.settings.broker_url}>"

    @overload
    def handler(self, func: F, /) -> F: ...

    @overload
    def handler(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        default: bool = False,
        timeout_seconds: float = 600.0,
    ) -> Callable[[F], F]: ...

    def handler(
        self,
        func: F | None = None,
        /,
        *,
        name: str | None = None,
        default: bool = False,
        timeout_seconds: float = 600.0,
    ) -> F | Callable[[F], F]:
        """Register a handler: ``@app.handler`` or ``@app.handler(name=...)``.

        A handler takes the `AsyncRequest` (its chat request is
        ``request.request``) and returns a `ChatResponse` or a dict that
        validates as one. It may be a plain function (run on a thread pool) or
        an ``async def`` coroutine (run on the worker's event loop). The first
        handler registered is the default unless another says ``default=True``.

        Args:
            func: The function, when used without parentheses.
            name: The name requests pick it by. Defaults to the function's name.
            default: Run it for requests that name no handler.
            timeout_seconds: How long one call may run before it is stopped and
                counted as a failed attempt. Defaults to 600.

        Returns:
            The function itself, unchanged.
        """

        def register(target: F) -> F:
            entry = Handler(name or target.__name__, target, float(timeout_seconds))
            if entry.name in self._handlers:
                message = f"a handler named {entry.name!r} is already registered"
                raise ConfigurationError(message)
            self._handlers[entry.name] = entry
            if default or self._default is None:
                self._default = entry.name
            return target

        return register(func) if func is not None else register

    @property
    def handlers(self) -> dict[str, Handler]:
        """The registered handlers by name."""
        return dict(self._handlers)

    def get_handler(self, name: str | None) -> Handler:
        """Return the handler a request names, or the default one for None.

        Raises:
            UnknownHandler: No handler has that name (or none is registered).
        """
        key = name if name is not None else self._default
        if key is None or key not in self._handlers:
            known = ", ".join(sorted(self._handlers)) or "none"
            message = f"unknown handler {name!r} (registered: {known})"
            raise UnknownHandler(message)
        return self._handlers[key]

    @property
    def broker(self) -> Broker:
        """The broker, connected on first use."""
        with self._lock:
            if self._broker is None:
                self._broker = make_broker(self.settings)
                if self.settings.transport == "memory":
                    create_queues(self._broker, self.settings)
            return self._broker

    @property
    def results(self) -> ResultStore:
        """The result store, opened on first use."""
        with self._lock:
            if self._results is None:
                self._results = open_result_store(
                    self.settings.result_store,
                    self.settings.result_ttl_seconds,
                    self.settings,
                )
            return self._results

    @property
    def ledger(self) -> Ledger:
        """The ledger of answered request ids, opened on first use."""
        with self._lock:
            if self._ledger is None:
                self._ledger = open_ledger(self.settings.ledger_url())
            return self._ledger

    def create_queues(self, options: QueueOptions | None = None) -> QueueSetup:
        """Create the request, response and dead-letter queues if missing."""
        return create_queues(self.broker, self.settings, options)

    def check_queues(self) -> QueueSetup:
        """Check the queues a worker needs; see `asyncllm._queues.check_queues`."""
        return check_queues(self.broker, self.settings)

    def submit(
        self,
        request: ChatRequest | Mapping[str, Any],
        *,
        tenant_id: str | None = None,
        handler: str | None = None,
        provider: str | None = None,
        callback: str | None = None,
        request_id: str | None = None,
    ) -> AsyncResult:
        """Queue a chat request and return at once.

        Args:
            request: A `ChatRequest` or a dict in the chat-completions shape.
            tenant_id: The tenant. Defaults to ``settings.default_tenant``.
            handler: The handler to run. Defaults to the app's default.
            provider: A provider or route for the handler, if any.
            callback: A URL to notify on completion, if any.
            request_id: The id to use. Defaults to a new UUID.

        Returns:
            A handle to look the result up.

        Raises:
            InvalidMessage: The request is not valid; the message names the field.
            PayloadTooLarge: The encoded request exceeds the queue's size limit.
            TransportError: SQS refused the message.
        """
        fields: dict[str, Any] = {
            "tenant_id": tenant_id or self.settings.default_tenant,
            "request": request,
            "provider": provider,
            "callback": callback,
            "handler": handler,
        }
        if request_id is not None:
            fields["id"] = request_id
        fields = {key: value for key, value in fields.items() if value is not None}
        return self.send_request(_build_request(fields))

    def send_request(self, request: AsyncRequest) -> AsyncResult:
        """Queue a prepared `AsyncRequest` and return its handle."""
        queue_url = self.broker.queue_url(self.settings.request_queue)
        body = encode(request)
        attributes = make_attributes(request.tenant_id, request.id)
        check_size(body, attributes, self._max_message_bytes(queue_url))
        self.results.mark_queued(request.id, request.tenant_id)
        self.broker.send(queue_url, body, attributes)
        logger.info(
            "request %s queued",
            request.id,
            extra={"request_id": request.id, "tenant_id": request.tenant_id},
        )
        return AsyncResult(self, request.id, request.tenant_id)

    def submit_many(
        self,
        requests: Iterable[ChatRequest | Mapping[str, Any]],
        *,
        tenant_id: str | None = None,
        handler: str | None = None,
        provider: str | None = None,
    ) -> list[AsyncResult]:
        """Queue many chat requests with batched SQS calls (10 per call).

        Every request is validated before anything is sent.

        Args:
            requests: Chat requests or dicts in the chat-completions shape.
            tenant_id: The tenant of all of them. Defaults to
                ``settings.default_tenant``.
            handler: The handler to run. Defaults to the app's default.
            provider: A provider or route for the handler, if any.

        Returns:
            One handle per request, in order.

        Raises:
            InvalidMessage: A request is not valid; the message names its index.
            TransportError: Some messages could not be sent after retries; the
                message names them. Those before them in the batch were sent.
        """
        common = {
            "tenant_id": tenant_id or self.settings.default_tenant,
            "handler": handler,
            "provider": provider,
        }
        prepared = []
        for index, request in enumerate(requests):
            fields = {k: v for k, v in common.items() if v is not None}
            try:
                prepared.append(_build_request({**fields, "request": request}))
            except InvalidMessage as exc:
                raise InvalidMessage(f"requests[{index}]: {exc.reason}") from None
        return self.send_requests(prepared)

    def send_requests(self, requests: Sequence[AsyncRequest]) -> list[AsyncResult]:
        """Queue prepared requests with SendMessageBatch; see `submit_many`."""
        queue_url = self.broker.queue_url(self.settings.request_queue)
        limit = self._max_message_bytes(queue_url)
        outgoing = [_outgoing(request, limit) for request in requests]
        for request in requests:
            self.results.mark_queued(request.id, request.tenant_id)
        for batch in _batches(outgoing):
            self._send_batch(queue_url, batch)
        logger.info("%d requests queued", len(requests), extra={"queue": queue_url})
        return [AsyncResult(self, r.id, r.tenant_id) for r in requests]

    def _send_batch(self, queue_url: str, batch: list[Outgoing]) -> None:
        """Send one batch, retrying the entries SQS did not accept."""
        for attempt in range(4):
            failed = set(self.broker.send_batch(queue_url, batch))
            batch = [entry for entry in batch if entry.id in failed]
            if not batch:
                return
            time.sleep(0.1 * 2**attempt)
        ids = ", ".join(entry.id for entry in batch)
        raise TransportError(f"SQS did not accept requests {ids} after 4 tries")

    def _max_message_bytes(self, queue_url: str) -> int:
        if queue_url not in self._max_bytes:
            try:
                attributes = self.broker.get_attributes(queue_url)
            except TransportError:
                # Without sqs:GetQueueAttributes, assume SQS's own maximum.
                attributes = {}
            limit = attributes.get("MaximumMessageSize", str(SQS_MAX_MESSAGE_BYTES))
            self._max_bytes[queue_url] = int(limit)
        return self._max_bytes[queue_url]

    def get(self, request_id: str, tenant_id: str | None = None) -> AsyncResult:
        """Return a handle for a request id, for example one kept from `submit`."""
        return AsyncResult(self, request_id, tenant_id)

    def status(self, request_id: str, tenant_id: str | None = None) -> Status:
        """Return where a request stands, reading new responses first.

        Args:
            request_id: The request id.
            tenant_id: When given, another tenant's request reads as not found.
        """
        self.collect()
        return self.results.status(request_id, tenant_id)

    def get_result(
        self,
        request_id: str,
        *,
        tenant_id: str | None = None,
        timeout: float | None = 0,
    ) -> AsyncResponse:
        """Return the `AsyncResponse` for a request id, waiting if asked.

        Args:
            request_id: The request id.
            tenant_id: When given, another tenant's request reads as not found.
            timeout: Seconds to wait for the answer; 0 looks once, None waits
                for as long as it takes. Defaults to 0.

        Returns:
            The response, successful or not (see ``response.ok``).

        Raises:
            ResultNotFound: The id is unknown here (never submitted through this
                store, or another tenant's) and no response for it arrived.
            ResultExpired: The result was kept longer than the store's TTL.
            ResultTimeout: The request is known but was not answered in time.
        """
        for response in self.as_completed([request_id], tenant_id, timeout):
            return response
        raise AssertionError("as_completed ended without an answer")  # pragma: no cover

    def wait(
        self,
        handles: Iterable[AsyncResult | str],
        timeout: float | None = None,
        tenant_id: str | None = None,
    ) -> list[AsyncResponse]:
        """Wait for many requests and return their responses in the given order.

        Raises:
            ResultTimeout: Some were not answered within ``timeout``; the
                message counts them.
        """
        ids = [_id_of(handle) for handle in handles]
        answers = {
            answer.request_id: answer
            for answer in self.as_completed(ids, tenant_id, timeout)
        }
        return [answers[request_id] for request_id in ids]

    def as_completed(
        self,
        handles: Iterable[AsyncResult | str],
        tenant_id: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[AsyncResponse]:
        """Yield responses as their requests are answered, in any order.

        Args:
            handles: Request handles or ids.
            tenant_id: When given, other tenants' requests read as not found.
            timeout: Seconds to wait in all; None waits for as long as it
                takes, 0 looks once.

        Raises:
            ResultNotFound: An id is unknown and no response for it arrived.
            ResultExpired: A result was kept longer than the store's TTL.
            ResultTimeout: Known requests were still unanswered at the deadline.
        """
        pending = {_id_of(handle): handle for handle in handles}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            yield from self._take_answered(pending, tenant_id)
            if not pending:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self.collect()
                yield from self._take_answered(pending, tenant_id)
                self._raise_unanswered(pending, tenant_id)
            self._collect_or_nap(remaining)

    def _take_answered(
        self, pending: dict[str, Any], tenant_id: str | None
    ) -> Iterator[AsyncResponse]:
        for request_id in list(pending):
            record = self.results.get(request_id, tenant_id)
            if record is not None and record.response is not None:
                del pending[request_id]
                yield record.response
            elif record is not None and record.status is Status.EXPIRED:
                message = f"the result of request {request_id!r} has expired"
                raise ResultExpired(message)

    def _raise_unanswered(self, pending: dict[str, Any], tenant_id: str | None) -> None:
        if not pending:
            return
        unknown = [i for i in pending if self.results.get(i, tenant_id) is None]
        if unknown:
            raise ResultNotFound(f"no request {unknown[0]!r} is known")
        first = next(iter(pending))
        if len(pending) == 1:
            raise ResultTimeout(f"request {first!r} is not answered yet")
        raise ResultTimeout(f"{len(pending)} requests are not answered yet")

    def _collect_or_nap(self, remaining: float | None) -> None:
        wait = self.settings.wait_time_seconds
        if remaining is not None:
            wait = min(wait, max(0, int(remaining)))
        if self.collect(wait_seconds=wait) == 0 and wait == 0:
            time.sleep(0.05 if remaining is None else min(0.05, remaining))

    def collect(self, wait_seconds: float = 0, max_batches: int = 50) -> int:
        """Move responses from the response queue into the result store.

        See `Collector.collect`; returns how many responses were stored.
        """
        return self.collector.collect(wait_seconds, max_batches)

    @property
    def collector(self) -> Collector:
        """The app's `Collector`."""
        with self._lock:
            if self._collector is None:
                self._collector = Collector(self)
            return self._collector

    def worker(self, **options: Any) -> Worker:
        """Return a `Worker` for this app; options are `Worker`'s keyword arguments."""
        from ._worker import Worker

        return Worker(self, **options)

    def close(self) -> None:
        """Close the broker connection and the result store."""
        with self._lock:
            if self._broker is not None:
                self._broker.close()
                self._broker = None
            if self._results is not None:
                self._results.close()
                self._results = None
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None


def _outgoing(request: AsyncRequest, limit: int) -> Outgoing:
    body = encode(request)
    attributes = make_attributes(request.tenant_id, request.id)
    check_size(body, attributes, limit)
    return Outgoing(request.id, body, attributes)


def _batches(entries: list[Outgoing]) -> Iterator[list[Outgoing]]:
    """Split entries into batches of at most 10 messages and 1 MiB."""
    batch: list[Outgoing] = []
    size = 0
    for entry in entries:
        entry_size = encoded_size(entry.body, entry.attributes)
        if batch and (len(batch) == 10 or size + entry_size > SQS_MAX_MESSAGE_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry_size
    if batch:
        yield batch


def _id_of(handle: AsyncResult | str) -> str:
    return handle if isinstance(handle, str) else handle.id


def _build_request(fields: dict[str, Any]) -> AsyncRequest:
    from pydantic import ValidationError

    from ._wire import describe_validation_error

    try:
        return AsyncRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidMessage(describe_validation_error(exc)) from None


class AsyncResult:
    """A handle on a submitted request.

    Attributes:
        id: The request id.
        tenant_id: The tenant the lookups are scoped to, if any.
    """

    def __init__(self, app: AsyncLLM, request_id: str, tenant_id: str | None) -> None:
        self.app = app
        self.id = request_id
        self.tenant_id = tenant_id

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def status(self) -> Status:
        """Return where the request stands."""
        return self.app.status(self.id, self.tenant_id)

    def ready(self) -> bool:
        """True once the request is answered, successfully or not."""
        return self.status() in (Status.COMPLETED, Status.FAILED)

    def response(self, timeout: float | None = None) -> AsyncResponse:
        """Wait for and return the `AsyncResponse` (success or error).

        Args:
            timeout: Seconds to wait; None waits for as long as it takes.
        """
        return self.app.get_result(self.id, tenant_id=self.tenant_id, timeout=timeout)

    def get(self, timeout: float | None = None) -> ChatResponse:
        """Wait for the request's completion and return it.

        Args:
            timeout: Seconds to wait; None waits for as long as it takes.

        Raises:
            RequestFailed: The request was answered with an error.
            ResultTimeout: No answer arrived within ``timeout``.
            ResultNotFound: The request id is unknown.
        """
        response = self.response(timeout)
        if response.error is not None:
            message = f"request {self.id} failed: {response.error.message}"
            raise RequestFailed(message, response)
        assert response.response is not None
        return response.response

    async def aget(self, timeout: float | None = None) -> ChatResponse:
        """Like `get`, for ``async`` code (the wait runs in a thread)."""
        return await asyncio.to_thread(self.get, timeout)
