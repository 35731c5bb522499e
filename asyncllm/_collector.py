"""The collector: moves responses from the response queue into the result store.

It runs inside lookups (on demand), as ``asyncllm collect`` (a long-running
process) and inside the gateway. A response message is deleted only after the
store has it; a store failure leaves the message on the queue for a later try.
A body that is not a valid response is moved at once to the response queue's
dead-letter queue, with the reason in the ``AsyncLLMDeadLetterReason``
attribute, and never dropped.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from typing import TYPE_CHECKING

from ._broker import QueueNotFound, Received
from ._errors import InvalidMessage, TransportError
from ._wire import (
    ATTR_REASON,
    ATTR_REQUEST_ID,
    ATTR_TENANT_ID,
    attribute_values,
    decode_response,
)

if TYPE_CHECKING:
    from ._app import AsyncLLM

__all__ = ["Collector"]

logger = logging.getLogger(__name__)


class Collector:
    """Drains an app's response queue into its result store.

    Args:
        app: The app whose response queue and store to use.
    """

    def __init__(self, app: AsyncLLM) -> None:
        self.app = app
        self._stop = threading.Event()
        self._queue_url: str | None = None
        self._dead_letter_url: str | None = None

    @property
    def queue_url(self) -> str:
        """The response queue's URL, resolved on first use."""
        if self._queue_url is None:
            self._queue_url = self.app.broker.queue_url(
                self.app.settings.response_queue
            )
        return self._queue_url

    def collect(self, wait_seconds: float = 0, max_batches: int = 50) -> int:
        """Read up to ``max_batches`` batches of 10 and store what they hold.

        Args:
            wait_seconds: Long-poll wait of the first receive, in seconds.
            max_batches: At most this many receives.

        Returns:
            How many responses became a request's answer.
        """
        stored = 0
        for batch in range(max_batches):
            wait = wait_seconds if batch == 0 else 0
            messages = self.app.broker.receive(self.queue_url, 10, wait)
            if not messages:
                break
            stored += self._store_batch(messages)
        return stored

    def _store_batch(self, messages: list[Received]) -> int:
        """Store a batch, then delete what was stored with one batch call."""
        stored = 0
        settled: list[Received] = []
        for message in messages:
            outcome = self._store(message)
            if outcome is not None:
                settled.append(message)
                stored += outcome
        self._delete(settled)
        return stored

    def run(self, install_signal_handlers: bool = True) -> int:
        """Collect until stopped (SIGTERM, SIGINT or `stop`); returns 0.

        Expired records are swept once an hour while it runs.
        """
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        logger.info("collector reading %s", self.queue_url)
        swept = 0.0
        while not self._stop.is_set():
            try:
                self.collect(wait_seconds=self.app.settings.wait_time_seconds)
            except TransportError as exc:
                logger.warning("collector: receive failed, retrying: %s", exc)
                self._stop.wait(1.0)
            swept = self._sweep(swept)
        logger.info("collector stopped")
        return 0

    def _sweep(self, last: float) -> float:
        import time

        now = time.monotonic()
        if now - last < 3600:
            return last
        expired = self.app.results.expire()
        if expired:
            logger.info("collector expired %d results", expired)
        return now

    def stop(self) -> None:
        """Ask `run` to return after the current receive."""
        self._stop.set()

    def _store(self, message: Received) -> int | None:
        """Store one response.

        Returns:
            1 if it became the answer, 0 for a duplicate (both to delete), or
            None when the message must stay or was dead-lettered.
        """
        try:
            response = decode_response(message.body)
        except InvalidMessage as exc:
            self._dead_letter(message, exc.reason)
            return None
        try:
            first = self.app.results.put(response)
        except Exception:
            logger.exception(
                "response %s could not be stored; it stays on the queue",
                response.request_id,
                extra={
                    "request_id": response.request_id,
                    "tenant_id": response.tenant_id,
                },
            )
            return None
        if not first:
            logger.info(
                "request %s answered again; the first answer stands",
                response.request_id,
                extra={
                    "request_id": response.request_id,
                    "tenant_id": response.tenant_id,
                },
            )
        return int(first)

    def _delete(self, messages: list[Received]) -> None:
        """Delete settled response messages, 10 to a call."""
        for start in range(0, len(messages), 10):
            receipts = [message.receipt for message in messages[start : start + 10]]
            try:
                failed = self.app.broker.delete_batch(self.queue_url, receipts)
            except TransportError as exc:
                failed = receipts
                logger.warning("response messages not deleted: %s", exc)
            if failed:
                # They come back after the visibility timeout and are stored
                # again harmlessly: the first answer stands.
                logger.warning("%d response messages not deleted", len(failed))

    def _dead_letter(self, message: Received, reason: str) -> None:
        values = attribute_values(message.attributes)
        extra = {
            "request_id": values.get(ATTR_REQUEST_ID),
            "tenant_id": values.get(ATTR_TENANT_ID),
        }
        logger.warning(
            "response message %s is not a valid response: %s",
            message.message_id,
            reason,
            extra=extra,
        )
        target = self._dead_letter_queue()
        if target is None:
            return
        attributes = {name: dict(value) for name, value in message.attributes.items()}
        attributes[ATTR_REASON] = {"DataType": "String", "StringValue": reason[:1024]}
        try:
            self.app.broker.send(target, message.body, attributes)
        except TransportError as exc:
            logger.error(
                "response message %s not dead-lettered: %s", message.message_id, exc
            )
            return
        self._delete([message])

    def _dead_letter_queue(self) -> str | None:
        """The response queue's dead-letter queue, from its redrive policy."""
        if self._dead_letter_url is None:
            policy = self.app.broker.get_attributes(self.queue_url).get("RedrivePolicy")
            if not policy:
                logger.error(
                    "response queue %s has no RedrivePolicy; invalid responses stay "
                    "on it (run 'asyncllm queues create')",
                    self.queue_url,
                )
                return None
            name = json.loads(policy)["deadLetterTargetArn"].rsplit(":", 1)[-1]
            try:
                self._dead_letter_url = self.app.broker.queue_url(name)
            except QueueNotFound:
                return None
        return self._dead_letter_url
