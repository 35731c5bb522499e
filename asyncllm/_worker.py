"""The worker: receive requests, run handlers, publish responses, settle messages.

One worker process runs an asyncio event loop. ``async def`` handlers run on
that loop and plain functions on a thread pool, up to ``concurrency`` calls at
once. Queue calls are blocking boto3 calls, so they run on a separate small
thread pool and never wait behind a slow handler. Each plain-function call gets
a daemon thread of its own, so that a call that overran its timeout or was
released at shutdown neither holds a slot nor keeps the process from exiting.

The life of one message is a chain of small steps: receive (only as many as
there are free slots) → decode → run the handler while a heartbeat keeps the
message invisible → publish the response → delete the request. A failure
changes the message's visibility instead of deleting it, so SQS's receive
count and redrive policy stay in charge of the three strikes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydantic import ValidationError

from ._batching import Batcher
from ._broker import MessageGone, Outgoing, Received
from ._errors import (
    InvalidMessage,
    PayloadTooLarge,
    RetryAfter,
    TerminalError,
    TransportError,
    UnknownHandler,
)
from ._metrics import Metrics
from ._models import AsyncRequest, AsyncResponse, ChatResponse, ErrorInfo
from ._queues import QueueSetup, check_queues
from ._webhooks import WebhookSender
from ._wire import (
    ATTR_FAILED_ATTEMPTS,
    ATTR_RATE_LIMITS,
    ATTR_REASON,
    ATTR_REQUEST_ID,
    ATTR_TENANT_ID,
    attribute_values,
    check_size,
    count_value,
    decode_request,
    describe_validation_error,
    encode,
    make_attributes,
    peek_identity,
)

if TYPE_CHECKING:
    from ._app import AsyncLLM, Handler

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The most ``ReceiveMessage`` calls one worker keeps in flight by default.
_MAX_RECEIVERS = 10

#: SQS's longest visibility timeout, and so the longest heartbeat extension.
_MAX_VISIBILITY = 43_200
#: SQS's longest DelaySeconds, and so the longest RetryAfter delay.
_MAX_DELAY = 900
#: The pause after an empty receive without long polling (wait time 0).
_EMPTY_POLL_PAUSE = 0.1


@dataclass
class _InFlight:
    """Book-keeping for one message between receive and settlement."""

    message: Received
    #: This attempt's number: failed attempts of earlier copies + receives.
    attempt: int = 1
    #: How often earlier copies were re-queued after a rate limit.
    rate_limits: int = 0
    request: AsyncRequest | None = None
    handler: str = "unknown"
    handler_future: asyncio.Future[Any] | None = None
    lost: bool = False
    started: float = field(default_factory=time.monotonic)


class Worker:
    """Consumes the request queue of an app and runs its handlers.

    Args:
        app: The app whose handlers and queues to use.
        concurrency: Handler calls in flight at once. Defaults to 10.
        grace_seconds: On shutdown, how long running calls may finish before
            their messages are released. Defaults to 30.
        wait_time_seconds: Long-poll wait of each receive. Defaults to the
            app's ``wait_time_seconds`` (20).
        retry_backoff_seconds: Delay before the second attempt; it doubles for
            each later one. Defaults to 2.
        max_backoff_seconds: The longest retry delay. Defaults to 300.
        heartbeat: Extend a running message's visibility before it expires.
            Defaults to True.
        max_extension_seconds: Stop extending after this long (SQS allows 12 h
            in all). Defaults to 43,200.
        max_rate_limit_retries: How often one request may be delayed by
            `RetryAfter` before that counts as a failed attempt. Defaults to 20.
        batch_delay: How long a response or delete waits for others to share
            its batch call, in seconds. Defaults to 0.02.
        receivers: Most ``ReceiveMessage`` calls in flight at once. One
            always polls; the others join only while receives come back
            full, so an idle worker makes one long poll at a time.
            Defaults to one per 10 slots of ``concurrency``, at most 10.
        metrics: Where to count what happens. Defaults to counting nothing.
        log_payloads: Log request and response bodies at DEBUG. Defaults to
            False: prompt text is never logged otherwise.
        webhooks: Delivers answers to requests' callback URLs. Defaults to a
            `WebhookSender` configured from the environment.
    """

    def __init__(
        self,
        app: AsyncLLM,
        *,
        concurrency: int = 10,
        grace_seconds: float = 30.0,
        wait_time_seconds: int | None = None,
        retry_backoff_seconds: float = 2.0,
        max_backoff_seconds: float = 300.0,
        heartbeat: bool = True,
        max_extension_seconds: float = _MAX_VISIBILITY,
        max_rate_limit_retries: int = 20,
        batch_delay: float = 0.02,
        receivers: int | None = None,
        metrics: Metrics | None = None,
        log_payloads: bool = False,
        webhooks: WebhookSender | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency={concurrency} must be at least 1")
        if receivers is not None and receivers < 1:
            raise ValueError(f"receivers={receivers} must be at least 1")
        self.app = app
        self.concurrency = concurrency
        self.grace_seconds = grace_seconds
        self.wait_time_seconds = (
            app.settings.wait_time_seconds
            if wait_time_seconds is None
            else wait_time_seconds
        )
        self.retry_backoff_seconds = retry_backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.heartbeat = heartbeat
        self.max_extension_seconds = max_extension_seconds
        self.max_rate_limit_retries = max_rate_limit_retries
        self.batch_delay = batch_delay
        self.receivers = receivers or min(_MAX_RECEIVERS, -(-concurrency // 10))
        self.metrics = metrics or Metrics()
        self.log_payloads = log_payloads
        self.webhooks = webhooks or WebhookSender()
        self.setup: QueueSetup | None = None
        self._in_flight: dict[asyncio.Task[None], _InFlight] = {}
        self._by_message_id: dict[str, _InFlight] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        self._backlog: asyncio.Event | None = None
        self._reserved = 0
        self._started = threading.Event()
        self._io: ThreadPoolExecutor | None = None

    # -- running and stopping -------------------------------------------------

    def run(self, install_signal_handlers: bool = True) -> int:
        """Run until stopped; returns the exit status (0 after a clean stop).

        Args:
            install_signal_handlers: Stop gracefully on SIGTERM and SIGINT (a
                second signal shortens the grace period). Only possible in the
                main thread. Defaults to True.
        """
        return asyncio.run(self.serve(install_signal_handlers))

    def stop(self) -> None:
        """Ask the worker to stop gracefully; safe to call from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._request_stop)

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the worker has checked its queues and is receiving."""
        return self._started.wait(timeout)

    def _request_stop(self) -> None:
        assert self._stopping is not None
        assert self._hurry is not None
        if self._stopping.is_set():
            logger.info(
                "worker %s: second stop signal, releasing running calls", self.app.name
            )
            self._hurry.set()
        elif not self._stopping.is_set():
            logger.info(
                "worker %s stopping: receiving no more; the current receive ends "
                "within %d s and running calls get %g s",
                self.app.name,
                self.wait_time_seconds,
                self.grace_seconds,
            )
        self._stopping.set()

    async def serve(self, install_signal_handlers: bool = False) -> int:
        """Run the worker on the current event loop until it is stopped."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._backlog = asyncio.Event()
        self._io = ThreadPoolExecutor(min(64, self.concurrency + 8), "asyncllm-io")
        if install_signal_handlers:
            self._install_signal_handlers()
        try:
            self.setup = await self._call(
                check_queues, self.app.broker, self.app.settings
            )
            self._log_start(self.setup)
            self._open_batchers()
            self._started.set()
            await self._receive_loop(self.setup)
            await self._shut_down()
            await self._drain_batchers()
            await self.webhooks.drain(self.grace_seconds)
        finally:
            self._io.shutdown(wait=True)
        logger.info("worker %s stopped", self.app.name)
        return 0

    def _open_batchers(self) -> None:
        """Batch response sends, deletes and visibility changes, 10 to a call."""
        self._responses: Batcher[tuple[str, dict[str, dict[str, str]]]] = Batcher(
            self._flush_responses, "SendMessageBatch", max_delay=self.batch_delay
        )
        self._deletes: Batcher[str] = Batcher(
            self._flush_deletes, "DeleteMessageBatch", max_delay=self.batch_delay
        )
        self._visibility: Batcher[tuple[str, str, int]] = Batcher(
            self._flush_visibility,
            "ChangeMessageVisibilityBatch",
            max_delay=self.batch_delay,
            final=(MessageGone,),
        )

    async def _drain_batchers(self) -> None:
        await self._responses.drain()
        await self._deletes.drain()
        await self._visibility.drain()

    async def _flush_responses(
        self, entries: Sequence[tuple[str, dict[str, dict[str, str]]]]
    ) -> dict[int, Exception]:
        assert self.setup is not None
        batch = [
            Outgoing(str(index), body, attributes)
            for index, (body, attributes) in enumerate(entries)
        ]
        failed = await self._call(
            self.app.broker.send_batch, self.setup.response_url, batch
        )
        refused = TransportError("SendMessageBatch: SQS refused the entry")
        return {int(entry_id): refused for entry_id in failed}

    async def _flush_deletes(self, receipts: Sequence[str]) -> dict[int, Exception]:
        assert self.setup is not None
        failed = set(
            await self._call(
                self.app.broker.delete_batch, self.setup.request_url, list(receipts)
            )
        )
        refused = TransportError("DeleteMessageBatch: SQS refused the entry")
        return {i: refused for i, receipt in enumerate(receipts) if receipt in failed}

    async def _flush_visibility(
        self, entries: Sequence[tuple[str, str, int]]
    ) -> dict[int, Exception]:
        """Send visibility changes, one batch call per queue and timeout."""
        groups: dict[tuple[str, int], list[int]] = {}
        for index, (queue_url, _, seconds) in enumerate(entries):
            groups.setdefault((queue_url, seconds), []).append(index)

        failed: dict[int, Exception] = {}
        for (queue_url, seconds), indexes in groups.items():
            receipts = [entries[index][1] for index in indexes]
            errors = await self._call(
                self.app.broker.change_visibility_batch, queue_url, receipts, seconds
            )
            failed.update(
                (index, errors[receipt])
                for index, receipt in zip(indexes, receipts, strict=True)
                if receipt in errors
            )
        return failed

    def _install_signal_handlers(self) -> None:
        assert self._loop is not None
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._request_stop)

    def _log_start(self, setup: QueueSetup) -> None:
        logger.info(
            "worker %s receiving from %s (concurrency %d, visibility %d s, "
            "%d receives before the dead-letter queue)",
            self.app.name,
            setup.request_url,
            self.concurrency,
            setup.visibility_timeout,
            setup.max_receive_count,
            extra={"queue": setup.request_url},
        )

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        """Run a blocking queue call on the I/O thread pool."""
        assert self._loop is not None
        return await self._loop.run_in_executor(
            self._io, functools.partial(func, *args)
        )

    # -- receiving ------------------------------------------------------------

    async def _receive_loop(self, setup: QueueSetup) -> None:
        receivers = [self._receiver(setup, index) for index in range(self.receivers)]
        await asyncio.gather(*receivers)

    async def _receiver(self, setup: QueueSetup, index: int) -> None:
        """Receive into free slots until the worker stops.

        Receiver 0 always polls; the others only while there is a backlog
        (the last receive came back full). Slots are reserved before each
        receive, so receivers together never take more than the free slots,
        and only one receive at a time asks for fewer than 10.
        """
        assert self._stopping is not None
        assert self._slot_freed is not None
        assert self._backlog is not None
        while not self._stopping.is_set():
            if index > 0 and not self._backlog.is_set():
                await self._wait_for(self._backlog)
                continue
            free = self.concurrency - len(self._in_flight) - self._reserved
            if free <= 0 or (free < 10 and self._reserved > 0):
                # A receive for fewer than 10 costs a call like a full one:
                # leave small ones to a single receiver.
                self._slot_freed.clear()
                await self._wait_for(self._slot_freed)
                continue

            wanted = min(10, free)
            self._reserved += wanted
            try:
                messages = await self._poll(setup.request_url, wanted)
            finally:
                self._reserved -= wanted
                # Receivers waiting for this receive to end may poll now.
                self._slot_freed.set()
            if self._stopping.is_set():
                await self._release_all(messages)
                return

            for message in messages:
                self._start(message)
            if len(messages) == 10:
                self._backlog.set()
            elif len(messages) < wanted:
                self._backlog.clear()
            if not messages and self.wait_time_seconds == 0:
                # Short polling returns at once: pause, or an idle worker spins.
                await self._wait_for(self._stopping, timeout=_EMPTY_POLL_PAUSE)

    async def _poll(self, queue_url: str, count: int) -> list[Received]:
        try:
            return await self._call(
                self.app.broker.receive, queue_url, count, self.wait_time_seconds
            )
        except TransportError as exc:
            logger.warning(
                "worker %s: receive failed, retrying: %s", self.app.name, exc
            )
            await self._wait_for(self._stopping, timeout=1.0)
            return []

    async def _wait_for(
        self, event: asyncio.Event | None, timeout: float | None = None
    ) -> None:
        assert event is not None
        assert self._stopping is not None
        waiters = {
            asyncio.ensure_future(event.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        }
        _, pending = await asyncio.wait(
            waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in pending:
            waiter.cancel()

    def _start(self, message: Received) -> None:
        running = self._by_message_id.get(message.message_id)
        if running is not None:
            self._adopt(running, message)
            return

        values = attribute_values(message.attributes)
        state = _InFlight(
            message,
            attempt=count_value(values.get(ATTR_FAILED_ATTEMPTS))
            + message.receive_count,
            rate_limits=count_value(values.get(ATTR_RATE_LIMITS)),
        )
        task = asyncio.ensure_future(self._process(state))
        self._in_flight[task] = state
        self._by_message_id[message.message_id] = state
        self.metrics.in_flight(len(self._in_flight))
        task.add_done_callback(self._finished)

    def _adopt(self, state: _InFlight, message: Received) -> None:
        """Take a second delivery of a message that is running here.

        SQS delivers at least once, and a message can come back while its
        first delivery still runs. Running it twice would answer twice; the
        running call keeps going and settles with the newest receipt handle,
        the only one SQS is sure to honour.
        """
        state.message = message
        logger.info(
            "message %s received again while running; not starting it twice",
            message.message_id,
            extra=self._extra(state),
        )

    def _finished(self, task: asyncio.Task[None]) -> None:
        state = self._in_flight.pop(task, None)
        if state is not None:
            self._by_message_id.pop(state.message.message_id, None)
        self.metrics.in_flight(len(self._in_flight))
        assert self._slot_freed is not None
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "worker %s: unexpected error settling a message",
                self.app.name,
                exc_info=task.exception(),
            )

    # -- shutting down --------------------------------------------------------

    async def _shut_down(self) -> None:
        running = list(self._in_flight)
        if running:
            logger.info(
                "worker %s stopping: waiting up to %g s for %d running calls",
                self.app.name,
                self.grace_seconds,
                len(running),
            )
            await self._wait_grace(running)
        for state in self._in_flight.values():
            if state.handler_future is not None and not state.handler_future.done():
                state.handler_future.cancel()
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=60)

    async def _wait_grace(self, running: list[asyncio.Task[None]]) -> None:
        """Wait for running calls until the grace period ends or a second signal."""
        assert self._hurry is not None
        hurry = asyncio.ensure_future(self._hurry.wait())
        deadline = time.monotonic() + self.grace_seconds
        pending: set[asyncio.Future[Any]] = set(running)
        while pending and not hurry.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            _, pending = await asyncio.wait(
                pending | {hurry},
                timeout=remaining,
                return_when=asyncio.FIRST_COMPLETED,
            )
            pending.discard(hurry)
        hurry.cancel()

    async def _release_all(self, messages: list[Received]) -> None:
        await asyncio.gather(*(self._hand_back(message) for message in messages))

    async def _hand_back(self, message: Received) -> None:
        """Return a message that never started, without using up an attempt.

        Making it visible again would cost a receive, and SQS dead-letters a
        message after ``maxReceiveCount`` receives however they ended; a few
        restarts in a row could then dead-letter a request that never failed.
        A fresh copy carries the attempts actually used in an attribute
        instead, and the received message is deleted. Should the copy fail
        to send, the message is released as before.
        """
        values = attribute_values(message.attributes)
        used = count_value(values.get(ATTR_FAILED_ATTEMPTS)) + message.receive_count - 1
        copy = _copy_attributes(message)
        copy[ATTR_FAILED_ATTEMPTS] = _number(used)
        try:
            await self._call(
                self.app.broker.send, message.queue_url, message.body, copy
            )
        except TransportError as exc:
            logger.warning(
                "message %s could not be handed back, releasing it: %s",
                message.message_id,
                exc,
            )
            await self._release(message)
            return
        await self._delete(message)
        logger.info("message %s handed back unstarted", message.message_id)

    async def _release(self, message: Received) -> None:
        """Make a message visible again at once, for another worker."""
        with contextlib.suppress(TransportError):
            await self._visibility.put((message.queue_url, message.receipt, 0))

    # -- one message ----------------------------------------------------------

    async def _process(self, state: _InFlight) -> None:
        message = state.message
        try:
            request = decode_request(message.body, attribute_values(message.attributes))
            handler = self.app.get_handler(request.handler)
        except (InvalidMessage, UnknownHandler) as exc:
            await self._reject(message, str(exc), type(exc).__name__)
            return
        state.request = request
        state.handler = handler.name
        self._count_received(state)
        if await self._call(self.app.ledger.answered, _ledger_key(request)):
            await self._delete(message)
            logger.info(
                "request %s was already answered; duplicate deleted",
                request.id,
                extra=self._extra(state),
            )
            return
        assert self._stopping is not None
        if self._stopping.is_set():
            # Received just before the stop signal; never started.
            await self._hand_back(message)
            return
        done = asyncio.Event()
        beat = (
            asyncio.ensure_future(self._heartbeat(state, done))
            if self.heartbeat
            else None
        )
        try:
            outcome = await self._run(state, handler, request)
        finally:
            done.set()
            if beat is not None:
                # Let a visibility change under way land before settling, so
                # that it cannot undo a release, a retry delay or a delete.
                await asyncio.wait({beat}, timeout=60)
        if outcome is None:
            await self._release(message)
            logger.info(
                "request %s released at shutdown", request.id, extra=self._extra(state)
            )
            return
        await self._settle(state, handler, outcome)

    def _count_received(self, state: _InFlight) -> None:
        assert state.request is not None
        sent = state.message.sent_at
        dwell = time.time() - sent if sent is not None else None
        self.metrics.received(state.handler, state.request.tenant_id, dwell)
        if self.log_payloads and logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request %s body: %s",
                state.request.id,
                state.message.body,
                extra=self._extra(state),
            )

    def _count(self, state: _InFlight, outcome: str) -> None:
        """Count an outcome: succeeded, failed, retried or dead_lettered."""
        tenant = state.request.tenant_id if state.request else "unknown"
        seconds = time.monotonic() - state.started
        if outcome == "succeeded":
            self.metrics.succeeded(state.handler, tenant, seconds)
        elif outcome == "failed":
            self.metrics.failed(state.handler, tenant, seconds)
        elif outcome == "retried":
            self.metrics.retried(state.handler, tenant)
        else:
            self.metrics.dead_lettered(state.handler, tenant)

    async def _run(
        self, state: _InFlight, handler: Handler, request: AsyncRequest
    ) -> ChatResponse | BaseException | None:
        """Run the handler; returns its response, its exception, or None if released."""
        assert self._loop is not None
        if handler.is_async:
            call = cast(Awaitable[Any], handler.func(request))
            future: asyncio.Future[Any] = asyncio.ensure_future(call)
        else:
            future = _run_in_daemon_thread(self._loop, handler.func, request)
        state.handler_future = future
        try:
            result = await asyncio.wait_for(future, handler.timeout_seconds)
        except asyncio.TimeoutError:
            return TimeoutError(
                f"handler {handler.name!r} ran over {handler.timeout_seconds:g} s"
            )
        except asyncio.CancelledError:
            return None
        except Exception as exc:
            return exc
        return _as_response(result)

    async def _settle(
        self, state: _InFlight, handler: Handler, outcome: ChatResponse | BaseException
    ) -> None:
        if state.lost:
            logger.warning(
                "request %s: the message was lost while running; not publishing",
                state.message.message_id,
                extra=self._extra(state),
            )
            return
        if isinstance(outcome, ChatResponse):
            await self._succeed(state, handler, outcome)
        elif isinstance(outcome, TerminalError):
            await self._fail_terminally(state, outcome)
        elif isinstance(outcome, RetryAfter):
            await self._retry_after(state, outcome)
        else:
            await self._fail(state, outcome)

    async def _succeed(
        self, state: _InFlight, handler: Handler, response: ChatResponse
    ) -> None:
        request = state.request
        assert request is not None
        answer = AsyncResponse(
            request_id=request.id,
            tenant_id=request.tenant_id,
            response=response,
            attempts=state.attempt,
        )
        try:
            await self._publish(answer)
        except PayloadTooLarge as exc:
            await self._fail_terminally(
                state, TerminalError(exc.reason, code="response_too_large")
            )
            return
        self._notify(request, answer)
        await self._call(self.app.ledger.record, _ledger_key(request))
        await self._delete(state.message)
        self._count(state, "succeeded")
        if self.log_payloads and logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request %s response: %s",
                request.id,
                response.to_wire(),
                extra=self._extra(state),
            )
        logger.info(
            "request %s completed by %s in %.2f s (attempt %d)",
            request.id,
            handler.name,
            time.monotonic() - state.started,
            state.attempt,
            extra=self._extra(state),
        )

    async def _fail_terminally(self, state: _InFlight, error: TerminalError) -> None:
        info = ErrorInfo(
            type=type(error).__name__,
            message=error.message,
            code=error.code,
            status_code=error.status_code,
            retryable=False,
        )
        await self._publish_error(state, info)
        # The reason is shown by `dlq list`; the message may quote the prompt
        # and goes only into the error response.
        reason = f"terminal error: {type(error).__name__}, code {error.code}"
        await self._dead_letter(state.message, reason, state.attempt)
        self._count(state, "failed")
        self._count(state, "dead_lettered")
        request_id = state.request.id if state.request else state.message.message_id
        logger.warning(
            "request %s failed terminally (%s, code %s, status %s)",
            request_id,
            type(error).__name__,
            error.code,
            error.status_code,
            extra=self._extra(state),
        )
        _log_error_text(request_id, error, state)

    async def _retry_after(self, state: _InFlight, signal_: RetryAfter) -> None:
        """Re-queue a delayed copy, so a rate limit uses up no failed attempt."""
        assert state.request is not None
        if state.rate_limits >= self.max_rate_limit_retries:
            reason = f"still rate limited after {state.rate_limits} delays"
            await self._fail(state, RuntimeError(reason))
            return
        delay = min(_MAX_DELAY, max(0, round(signal_.seconds)))
        copy = _copy_attributes(state.message)
        copy[ATTR_FAILED_ATTEMPTS] = _number(state.attempt - 1)
        copy[ATTR_RATE_LIMITS] = _number(state.rate_limits + 1)
        try:
            await self._call(
                self.app.broker.send,
                state.message.queue_url,
                state.message.body,
                copy,
                delay,
            )
        except TransportError as exc:
            logger.warning("request %s: re-queue failed: %s", state.request.id, exc)
            await self._change_visibility(state, delay)
            return
        await self._delete(state.message)
        logger.info(
            "request %s rate limited; re-queued to run in %d s",
            state.request.id,
            delay,
            extra=self._extra(state),
        )

    async def _fail(self, state: _InFlight, exc: BaseException) -> None:
        assert self.setup is not None
        assert state.request is not None
        limit = self.setup.max_receive_count
        self._count(state, "failed")
        if state.attempt < limit:
            delay = self._backoff(state.attempt)
            await self._change_visibility(state, delay)
            self._count(state, "retried")
            logger.info(
                "request %s failed attempt %d of %d with %s; retry in %d s",
                state.request.id,
                state.attempt,
                limit,
                type(exc).__name__,
                delay,
                extra=self._extra(state),
            )
            _log_error_text(state.request.id, exc, state)
            return
        code = getattr(exc, "code", None)
        status_code = getattr(exc, "status_code", None)
        info = ErrorInfo(
            type=type(exc).__name__,
            message=str(exc) or type(exc).__name__,
            code=code if isinstance(code, str) else None,
            status_code=status_code if type(status_code) is int else None,
            retryable=True,
        )
        await self._publish_error(state, info)
        await self._give_up(state, f"failed {state.attempt} attempts: {info.type}")
        self._count(state, "dead_lettered")
        logger.warning(
            "request %s failed attempt %d of %d with %s; giving up, to the "
            "dead-letter queue",
            state.request.id,
            state.attempt,
            limit,
            info.type,
            extra=self._extra(state),
        )
        _log_error_text(state.request.id, exc, state)

    async def _give_up(self, state: _InFlight, reason: str) -> None:
        """Send a request whose attempts are used up to the dead-letter queue."""
        assert self.setup is not None
        if state.message.receive_count >= self.setup.max_receive_count:
            # Visible at once: the next receive lets SQS's redrive move it,
            # body and attributes untouched.
            await self._change_visibility(state, 0)
        else:
            # A copy re-queued after a rate limit has receives left.
            await self._dead_letter(state.message, reason, state.attempt)

    def _backoff(self, attempt: int) -> int:
        delay = self.retry_backoff_seconds * 2.0 ** (attempt - 1)
        return round(min(self.max_backoff_seconds, delay))

    # -- queue steps ----------------------------------------------------------

    async def _publish(self, response: AsyncResponse) -> None:
        assert self.setup is not None
        body = encode(response)
        attributes = make_attributes(response.tenant_id, response.request_id)
        check_size(body, attributes, self.setup.max_message_bytes)
        await self._responses.put((body, attributes))

    async def _publish_error(self, state: _InFlight, info: ErrorInfo) -> None:
        request = state.request
        if request is None:
            return
        answer = AsyncResponse(
            request_id=request.id,
            tenant_id=request.tenant_id,
            error=info,
            attempts=state.attempt,
        )
        await self._publish(answer)
        self._notify(request, answer)

    def _notify(self, request: AsyncRequest, answer: AsyncResponse) -> None:
        """Deliver a published answer to the request's callback URL, if it has one.

        The worker sends webhooks, not the collector: it is the one process
        that holds the request, and so its callback URL, when the answer is
        made; the collector sees only the response, and may not run at all
        when callers poll. Delivery runs as a background task, so retries
        never delay settling the message; `serve` gives unfinished ones the
        grace period at shutdown.
        """
        if request.callback is not None:
            self.webhooks.schedule(request.callback, answer)

    async def _delete(self, message: Received) -> None:
        try:
            await self._deletes.put(message.receipt)
        except TransportError as exc:
            logger.warning(
                "message %s could not be deleted: %s", message.message_id, exc
            )

    async def _change_visibility(self, state: _InFlight, seconds: int) -> None:
        message = state.message
        try:
            await self._visibility.put((message.queue_url, message.receipt, seconds))
        except TransportError as exc:
            logger.warning(
                "message %s: visibility change failed: %s",
                message.message_id,
                exc,
                extra=self._extra(state),
            )

    async def _reject(self, message: Received, reason: str, kind: str) -> None:
        """Move a message the worker cannot use to the dead-letter queue."""
        request_id, tenant_id = peek_identity(message.body)
        values = attribute_values(message.attributes)
        attribute_tenant = values.get(ATTR_TENANT_ID)
        attribute_id = values.get(ATTR_REQUEST_ID)
        logger.warning(
            "message %s rejected: %s",
            message.message_id,
            reason,
            extra={"request_id": request_id, "tenant_id": tenant_id},
        )
        # Answer only when it is plain whom to answer: attributes that disagree
        # with the body could misdirect the error to another tenant's request.
        # Answer on the first receive only: a message that could not be
        # dead-lettered comes back until the redrive policy moves it.
        if (
            request_id
            and tenant_id
            and attribute_tenant in (None, tenant_id)
            and attribute_id in (None, request_id)
            and message.receive_count <= 1
        ):
            error = ErrorInfo(type=kind, message=reason, retryable=False)
            answer = AsyncResponse(
                request_id=request_id, tenant_id=tenant_id, error=error
            )
            with contextlib.suppress(InvalidMessage, TransportError, ValidationError):
                await self._publish(answer)
        await self._dead_letter(message, reason, 0)
        self.metrics.dead_lettered("unknown", tenant_id or "unknown")

    async def _dead_letter(self, message: Received, reason: str, attempts: int) -> None:
        """Copy a message to the dead-letter queue with a reason, then delete it.

        The copy carries the reason and the attempts made (0 for a message no
        handler ran), which ``dlq list`` shows. Should the queue refuse that
        copy (a body near the size limit has no room for more attributes), a
        copy with the message's own attributes is tried; should that fail
        too, the message is made visible at once so that the redrive policy
        moves it after its remaining receives.
        """
        assert self.setup is not None
        labelled = _copy_attributes(message)
        labelled[ATTR_REASON] = {"DataType": "String", "StringValue": reason[:1024]}
        labelled[ATTR_FAILED_ATTEMPTS] = _number(attempts)
        for attributes in (labelled, _copy_attributes(message)):
            try:
                await self._call(
                    self.app.broker.send,
                    self.setup.dead_letter_url,
                    message.body,
                    attributes,
                )
            except TransportError as exc:
                error = exc
                continue
            await self._delete(message)
            return
        logger.error(
            "message %s could not be dead-lettered, leaving it to the redrive "
            "policy: %s",
            message.message_id,
            error,
        )
        await self._release(message)

    async def _heartbeat(self, state: _InFlight, done: asyncio.Event) -> None:
        """Keep the message invisible while its handler runs, until ``done``."""
        assert self.setup is not None
        timeout = self.setup.visibility_timeout
        interval = max(0.2, timeout / 2)
        # Counted from the receive, not from the handler's start: the timeout
        # began to run when the message was received.
        begun = state.started
        next_beat = begun + interval
        while time.monotonic() - begun < self.max_extension_seconds:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    done.wait(), max(0.0, next_beat - time.monotonic())
                )
            if done.is_set():
                return
            next_beat = time.monotonic() + interval
            message = state.message
            try:
                await self._visibility.put(
                    (message.queue_url, message.receipt, timeout)
                )
                self.metrics.heartbeat()
            except MessageGone:
                state.lost = True
                logger.warning(
                    "request %s: receipt handle no longer valid; another worker "
                    "may have it",
                    state.request.id if state.request else "?",
                    extra=self._extra(state),
                )
                return
            except TransportError as exc:
                logger.warning(
                    "heartbeat failed, will retry: %s", exc, extra=self._extra(state)
                )

    def _extra(self, state: _InFlight) -> dict[str, Any]:
        request = state.request
        return {
            "request_id": request.id if request else None,
            "tenant_id": request.tenant_id if request else None,
            "handler": state.handler if request else None,
            "attempt": state.attempt,
            "queue": state.message.queue_url,
        }


def _run_in_daemon_thread(
    loop: asyncio.AbstractEventLoop, func: Callable[[Any], Any], argument: Any
) -> asyncio.Future[Any]:
    """Call ``func(argument)`` on a new daemon thread; returns the call's future.

    Unlike a thread pool's, the thread is not joined at interpreter exit, and a
    call that is abandoned (timed out or released) frees its slot at once.
    """
    future: asyncio.Future[Any] = loop.create_future()

    def settle(outcome: Any, failed: bool) -> None:
        if future.done():
            return
        if failed and isinstance(outcome, StopIteration):
            # A future refuses StopIteration; hand on what it means.
            future.set_exception(RuntimeError(f"handler raised {outcome!r}"))
        elif failed:
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def target() -> None:
        try:
            outcome, failed = func(argument), False
        except BaseException as exc:  # handed to the awaiting coroutine
            outcome, failed = exc, True
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(settle, outcome, failed)

    threading.Thread(target=target, name="asyncllm-handler", daemon=True).start()
    return future


def _as_response(result: Any) -> ChatResponse | BaseException:
    if isinstance(result, ChatResponse):
        return result
    try:
        return ChatResponse.model_validate(result)
    except ValidationError as exc:
        reason = describe_validation_error(exc)
        return InvalidMessage(f"handler returned an invalid ChatResponse: {reason}")


def _ledger_key(request: AsyncRequest) -> str:
    """The ledger's key: tenant and id, so one tenant's id never hides another's."""
    return json.dumps([request.tenant_id, request.id])


def _log_error_text(request_id: str, error: BaseException, state: _InFlight) -> None:
    """Log an error's own text and traceback, at DEBUG only.

    Handlers and providers may quote the prompt in an exception's message,
    and prompt text never goes to logs above DEBUG; the text is published in
    the error response all the same.
    """
    logger.debug(
        "request %s error text: %s",
        request_id,
        error,
        exc_info=error,
        extra={"request_id": request_id, "attempt": state.attempt},
    )


def _number(value: int) -> dict[str, str]:
    return {"DataType": "Number", "StringValue": str(value)}


def _copy_attributes(message: Received) -> dict[str, dict[str, str]]:
    return {name: dict(value) for name, value in message.attributes.items()}
