"""Brokers: the few queue operations the app and the worker need, for SQS and memory.

Both brokers speak SQS's model: a received message stays invisible for the
queue's visibility timeout, carries a receive count, and moves to the queue's
dead-letter queue when it is received more often than the redrive policy's
``maxReceiveCount``.

The SQS broker opens its connection through kombu's SQS transport (credentials,
region, endpoint and botocore settings) and then calls SQS through the boto3
client kombu made. It does not use kombu's consumer for message I/O, because
that path decodes bodies that merely look like base64, takes any JSON object
with a ``properties`` key for its own envelope, and on close writes unsettled
message bodies to the temp directory; it also offers no batch calls.
"""

from __future__ import annotations

import abc
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from queue import Empty
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

from ._config import Settings
from ._errors import TransportError

__all__ = [
    "Broker",
    "Outgoing",
    "MemoryBroker",
    "MessageGone",
    "QueueNotFound",
    "Received",
    "SQSBroker",
    "make_broker",
]

_SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp"]


class QueueNotFound(TransportError):
    """The named queue does not exist."""


class MessageGone(TransportError):
    """A receipt handle is no longer valid: the message was deleted or re-received."""


@dataclass(frozen=True)
class Received:
    """One message as received from a queue.

    Attributes:
        queue_url: The queue it came from.
        message_id: The queue's id for the message (not the request id).
        receipt: The receipt handle that settles this delivery.
        body: The body exactly as the queue returned it.
        attributes: The message attributes in SQS's shape
            (``{name: {"DataType": ..., "StringValue": ...}}``).
        receive_count: How many times the queue has handed the message out.
        sent_at: When the message was first sent, in epoch seconds, if known.
    """

    queue_url: str
    message_id: str
    receipt: str
    body: str | bytes
    attributes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    receive_count: int = 1
    sent_at: float | None = None


@dataclass(frozen=True)
class Outgoing:
    """One message of a batch send.

    Attributes:
        id: An id for the entry, unique within its batch.
        body: The message body.
        attributes: The message attributes in SQS's shape.
        delay_seconds: How long the message stays hidden after sending.
    """

    id: str
    body: str
    attributes: Mapping[str, Mapping[str, str]]
    delay_seconds: int = 0


class Broker(abc.ABC):
    """The queue operations asyncllm uses, with SQS semantics."""

    @abc.abstractmethod
    def send(
        self,
        queue_url: str,
        body: str | bytes,
        attributes: Mapping[str, Mapping[str, str]],
        delay_seconds: int = 0,
    ) -> str:
        """Send one message and return its message id."""

    def send_batch(self, queue_url: str, entries: Sequence[Outgoing]) -> list[str]:
        """Send up to 10 messages in one call.

        Returns:
            The ids of the entries that failed; the others were sent.
        """
        failed = []
        for entry in entries:
            try:
                self.send(queue_url, entry.body, entry.attributes, entry.delay_seconds)
            except TransportError:
                failed.append(entry.id)
        return failed

    @abc.abstractmethod
    def receive(
        self,
        queue_url: str,
        max_messages: int,
        wait_seconds: float,
        visibility_timeout: int | None = None,
    ) -> list[Received]:
        """Receive up to ``max_messages``, waiting up to ``wait_seconds`` for one.

        ``visibility_timeout`` overrides the queue's for these messages.
        """

    @abc.abstractmethod
    def delete(self, queue_url: str, receipt: str) -> None:
        """Delete a received message."""

    @abc.abstractmethod
    def change_visibility(self, queue_url: str, receipt: str, seconds: int) -> None:
        """Make a received message visible again after ``seconds``.

        Raises:
            MessageGone: The receipt handle is no longer valid.
        """

    def delete_batch(self, queue_url: str, receipts: Sequence[str]) -> list[str]:
        """Delete up to 10 received messages; returns the receipts that failed."""
        failed = []
        for receipt in receipts:
            try:
                self.delete(queue_url, receipt)
            except TransportError:
                failed.append(receipt)
        return failed

    def change_visibility_batch(
        self, queue_url: str, receipts: Sequence[str], seconds: int
    ) -> dict[str, TransportError]:
        """Change the visibility of up to 10 messages.

        Returns:
            The receipts that were not changed, each with its error:
            `MessageGone` when the receipt handle is no longer valid.
        """
        failed: dict[str, TransportError] = {}
        for receipt in receipts:
            try:
                self.change_visibility(queue_url, receipt, seconds)
            except TransportError as exc:
                failed[receipt] = exc
        return failed

    @abc.abstractmethod
    def queue_url(self, name_or_url: str) -> str:
        """Resolve a queue name (or URL) to the URL the other calls take.

        Raises:
            QueueNotFound: There is no such queue.
        """

    @abc.abstractmethod
    def get_attributes(self, queue_url: str) -> dict[str, str]:
        """Return all of a queue's attributes."""

    @abc.abstractmethod
    def create_queue(self, name: str, attributes: Mapping[str, str]) -> str:
        """Create a queue (or return the existing one's URL)."""

    @abc.abstractmethod
    def set_attributes(self, queue_url: str, attributes: Mapping[str, str]) -> None:
        """Change a queue's attributes."""

    @abc.abstractmethod
    def purge(self, queue_url: str) -> None:
        """Delete every message of a queue."""

    def close(self) -> None:  # noqa: B027 - optional for subclasses
        """Release connections."""


def make_broker(settings: Settings, max_connections: int = 50) -> Broker:
    """Return the broker the settings ask for.

    Args:
        settings: Which transport, endpoint and credentials to use.
        max_connections: The HTTP connection pool size, which bounds how many
            SQS calls run at once. Defaults to 50.
    """
    if settings.transport == "memory":
        return MemoryBroker()
    return SQSBroker(settings, max_connections=max_connections)


@contextlib.contextmanager
def _connect_errors(settings: Settings) -> Iterator[None]:
    """Turn a failure to open the SQS channel into one clear `TransportError`."""
    from botocore.exceptions import BotoCoreError, ClientError
    from kombu.exceptions import OperationalError

    try:
        yield
    except (OperationalError, BotoCoreError, ClientError) as exc:
        where = settings.endpoint_url or f"AWS SQS in {settings.region}"
        setting = (
            "ASYNCLLM_SQS_ENDPOINT_URL"
            if settings.endpoint_url
            else "AWS_REGION and the AWS credentials"
        )
        raise TransportError(
            f"cannot open SQS at {where}: {exc}; check {setting}, and that the "
            "endpoint is running and reachable"
        ) from exc


@contextlib.contextmanager
def _translate_errors(action: str, queue_url: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        text = f"{action} on {queue_url} failed: {code}: {exc}"
        if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
            raise QueueNotFound(text) from exc
        if "ReceiptHandleIsInvalid" in code or (
            # A send's InvalidParameterValue is about the message, not a receipt.
            "InvalidParameterValue" in code and not action.startswith("Send")
        ):
            raise MessageGone(text) from exc
        raise TransportError(text) from exc
    except BotoCoreError as exc:
        raise TransportError(f"{action} on {queue_url} failed: {exc}") from exc


#: Batch-entry error codes that mean the receipt handle is no longer valid.
_GONE_CODES = ("ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidParameterValue")


def _entry_error(action: str, queue_url: str, failure: Any) -> TransportError:
    """Turn one ``Failed`` entry of a batch reply into an error."""
    code = str(failure.get("Code", ""))
    text = f"{action} on {queue_url}: entry failed: {code}: {failure.get('Message')}"
    if any(gone in code for gone in _GONE_CODES):
        return MessageGone(text)
    return TransportError(text)


class SQSBroker(Broker):
    """Amazon SQS, or any SQS-compatible endpoint, through kombu's SQS transport.

    Args:
        settings: Region, endpoint, credentials and queue names.
        max_connections: The botocore connection pool size. Defaults to 50.
    """

    def __init__(self, settings: Settings, max_connections: int = 50) -> None:
        from kombu import Connection

        self._settings = settings
        self._connection = Connection(
            settings.kombu_url(),
            transport_options=self._transport_options(settings, max_connections),
        )
        with _connect_errors(settings):
            self._client: SQSClient = self._connection.default_channel.sqs()
        self._urls: dict[str, str] = {}

    @staticmethod
    def _transport_options(settings: Settings, max_connections: int) -> dict[str, Any]:
        # Queues given by URL are "predefined", which spares kombu a ListQueues
        # call (and the IAM permission for it) when the channel opens.
        predefined = {
            _name_of(url): {"url": url}
            for url in (settings.request_queue, settings.response_queue)
            if "://" in url
        }
        options: dict[str, Any] = {
            "region": settings.region,
            "is_secure": settings.is_secure(),
            "client-config": {
                "max_pool_connections": max_connections,
                "retries": {"max_attempts": 4, "mode": "standard"},
            },
        }
        if predefined:
            options["predefined_queues"] = predefined
        return options

    def send(
        self,
        queue_url: str,
        body: str | bytes,
        attributes: Mapping[str, Mapping[str, str]],
        delay_seconds: int = 0,
    ) -> str:
        """Send one message and return its message id."""
        with _translate_errors("SendMessage", queue_url):
            reply = self._client.send_message(
                QueueUrl=queue_url,
                # Bodies received from SQS are always text; bytes come only
                # from the memory broker.
                MessageBody=body if isinstance(body, str) else body.decode(),
                MessageAttributes=cast(Any, dict(attributes)),
                DelaySeconds=delay_seconds,
            )
        return str(reply["MessageId"])

    def send_batch(self, queue_url: str, entries: Sequence[Outgoing]) -> list[str]:
        """Send up to 10 messages with one SendMessageBatch call.

        Returns:
            The ids of the entries SQS did not accept.
        """
        request = [
            {
                "Id": entry.id,
                "MessageBody": entry.body,
                "MessageAttributes": dict(entry.attributes),
                "DelaySeconds": entry.delay_seconds,
            }
            for entry in entries
        ]
        with _translate_errors("SendMessageBatch", queue_url):
            reply = self._client.send_message_batch(
                QueueUrl=queue_url, Entries=cast(Any, request)
            )
        return [failure["Id"] for failure in reply.get("Failed", [])]

    def receive(
        self,
        queue_url: str,
        max_messages: int,
        wait_seconds: float,
        visibility_timeout: int | None = None,
    ) -> list[Received]:
        """Receive up to ``max_messages`` (1-10), long-polling ``wait_seconds``."""
        options: dict[str, Any] = {}
        if visibility_timeout is not None:
            options["VisibilityTimeout"] = visibility_timeout
        with _translate_errors("ReceiveMessage", queue_url):
            reply = self._client.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=max(1, min(10, max_messages)),
                WaitTimeSeconds=int(wait_seconds),
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=cast(Any, _SYSTEM_ATTRIBUTES),
                **options,
            )
        return [_from_sqs(queue_url, item) for item in reply.get("Messages", [])]

    def delete(self, queue_url: str, receipt: str) -> None:
        """Delete a received message."""
        with _translate_errors("DeleteMessage", queue_url):
            self._client.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt)

    def delete_batch(self, queue_url: str, receipts: Sequence[str]) -> list[str]:
        """Delete up to 10 messages with one DeleteMessageBatch call.

        Returns:
            The receipts SQS did not delete.
        """
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        with _translate_errors("DeleteMessageBatch", queue_url):
            reply = self._client.delete_message_batch(
                QueueUrl=queue_url, Entries=cast(Any, entries)
            )
        return [receipts[int(failure["Id"])] for failure in reply.get("Failed", [])]

    def change_visibility_batch(
        self, queue_url: str, receipts: Sequence[str], seconds: int
    ) -> dict[str, TransportError]:
        """Change up to 10 visibilities with one ChangeMessageVisibilityBatch call.

        Returns:
            The receipts SQS did not change, each with its error: `MessageGone`
            when the receipt handle is no longer valid.
        """
        entries = [
            {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": seconds}
            for i, r in enumerate(receipts)
        ]
        with _translate_errors("ChangeMessageVisibilityBatch", queue_url):
            reply = self._client.change_message_visibility_batch(
                QueueUrl=queue_url, Entries=cast(Any, entries)
            )
        return {
            receipts[int(failure["Id"])]: _entry_error(
                "ChangeMessageVisibilityBatch", queue_url, failure
            )
            for failure in reply.get("Failed", [])
        }

    def change_visibility(self, queue_url: str, receipt: str, seconds: int) -> None:
        """Make a received message visible again after ``seconds``."""
        with _translate_errors("ChangeMessageVisibility", queue_url):
            self._client.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            )

    def queue_url(self, name_or_url: str) -> str:
        """Resolve a queue name to its URL; a URL is returned as it is."""
        if "://" in name_or_url:
            return name_or_url
        if name_or_url not in self._urls:
            with _translate_errors("GetQueueUrl", name_or_url):
                reply = self._client.get_queue_url(QueueName=name_or_url)
            self._urls[name_or_url] = reply["QueueUrl"]
        return self._urls[name_or_url]

    def get_attributes(self, queue_url: str) -> dict[str, str]:
        """Return all of a queue's attributes."""
        with _translate_errors("GetQueueAttributes", queue_url):
            reply = self._client.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["All"]
            )
        return {str(k): v for k, v in reply.get("Attributes", {}).items()}

    def create_queue(self, name: str, attributes: Mapping[str, str]) -> str:
        """Create a queue, or return the URL of an existing one of that name."""
        with _translate_errors("CreateQueue", name):
            reply = self._client.create_queue(
                QueueName=name, Attributes=cast(Any, dict(attributes))
            )
        self._urls[name] = reply["QueueUrl"]
        return reply["QueueUrl"]

    def set_attributes(self, queue_url: str, attributes: Mapping[str, str]) -> None:
        """Change a queue's attributes."""
        with _translate_errors("SetQueueAttributes", queue_url):
            self._client.set_queue_attributes(
                QueueUrl=queue_url, Attributes=cast(Any, dict(attributes))
            )

    def purge(self, queue_url: str) -> None:
        """Delete every message of a queue (SQS allows one purge a minute)."""
        with _translate_errors("PurgeQueue", queue_url):
            self._client.purge_queue(QueueUrl=queue_url)

    def close(self) -> None:
        """Close kombu's connection (no message is held by it)."""
        self._connection.release()


def _name_of(queue_url: str) -> str:
    return urlsplit(queue_url).path.rstrip("/").rsplit("/", 1)[-1]


def _from_sqs(queue_url: str, item: Mapping[str, Any]) -> Received:
    system = item.get("Attributes", {})
    sent = system.get("SentTimestamp")
    return Received(
        queue_url=queue_url,
        message_id=item["MessageId"],
        receipt=item["ReceiptHandle"],
        body=item.get("Body", ""),
        attributes=item.get("MessageAttributes", {}),
        receive_count=int(system.get("ApproximateReceiveCount", "1")),
        sent_at=int(sent) / 1000 if sent else None,
    )


@dataclass
class _MemoryQueue:
    attributes: dict[str, str]
    in_flight: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)


class MemoryBroker(Broker):
    """An in-process broker on kombu's memory transport, for development and tests.

    Visible messages live in kombu's memory channel; this class adds what SQS
    has and that transport lacks: visibility timeouts, receive counts and
    redrive to a dead-letter queue. Every instance in one process shares the
    same queues, so an app and a worker thread see each other's messages.
    """

    _lock = threading.RLock()
    _queues: dict[str, _MemoryQueue] = {}  # noqa: RUF012 - shared on purpose

    def __init__(self) -> None:
        from kombu import Connection

        self._connection = Connection("memory://")
        self._channel = self._connection.default_channel

    @classmethod
    def reset(cls) -> None:
        """Forget every memory queue and message (for tests)."""
        from kombu.transport.memory import Channel

        with cls._lock:
            for name in cls._queues:
                Channel.queues.pop(name, None)
            cls._queues.clear()

    def send(
        self,
        queue_url: str,
        body: str | bytes,
        attributes: Mapping[str, Mapping[str, str]],
        delay_seconds: int = 0,
    ) -> str:
        """Send one message and return its message id."""
        message = {
            "message_id": str(uuid.uuid4()),
            "body": body,
            "attributes": {k: dict(v) for k, v in attributes.items()},
            "receive_count": 0,
            "sent_at": time.time(),
        }
        with self._lock:
            queue = self._queue(queue_url)
            if delay_seconds > 0:
                queue.in_flight[str(uuid.uuid4())] = (
                    time.monotonic() + delay_seconds,
                    message,
                )
            else:
                self._channel._put(queue_url, message)
        return str(message["message_id"])

    def receive(
        self,
        queue_url: str,
        max_messages: int,
        wait_seconds: float,
        visibility_timeout: int | None = None,
    ) -> list[Received]:
        """Receive up to ``max_messages``, polling up to ``wait_seconds``."""
        deadline = time.monotonic() + wait_seconds
        limit = max(1, min(10, max_messages))
        while True:
            with self._lock:
                received = self._take(queue_url, limit, visibility_timeout)
            if received or time.monotonic() >= deadline:
                return received
            time.sleep(0.02)

    def _take(
        self, name: str, limit: int, visibility_timeout: int | None
    ) -> list[Received]:
        queue = self._queue(name)
        self._restore_expired(name, queue)
        received: list[Received] = []
        while len(received) < limit:
            try:
                message = self._channel._get(name)
            except Empty:
                break
            message["receive_count"] += 1
            if self._redrive(queue, message):
                continue
            received.append(self._deliver(name, queue, message, visibility_timeout))
        return received

    def _restore_expired(self, name: str, queue: _MemoryQueue) -> None:
        now = time.monotonic()
        for receipt, (deadline, message) in list(queue.in_flight.items()):
            if deadline <= now:
                del queue.in_flight[receipt]
                self._channel._put(name, message)

    def _redrive(self, queue: _MemoryQueue, message: dict[str, Any]) -> bool:
        policy = queue.attributes.get("RedrivePolicy")
        if not policy:
            return False
        rules = json.loads(policy)
        if message["receive_count"] <= int(rules["maxReceiveCount"]):
            return False
        target = _name_of_arn(rules["deadLetterTargetArn"])
        self._channel._put(target, {**message, "receive_count": 0})
        return True

    def _deliver(
        self,
        name: str,
        queue: _MemoryQueue,
        message: dict[str, Any],
        visibility_timeout: int | None,
    ) -> Received:
        receipt = str(uuid.uuid4())
        timeout = visibility_timeout
        if timeout is None:
            timeout = int(queue.attributes.get("VisibilityTimeout", "30"))
        queue.in_flight[receipt] = (time.monotonic() + timeout, message)
        return Received(
            queue_url=name,
            message_id=message["message_id"],
            receipt=receipt,
            body=message["body"],
            attributes=message["attributes"],
            receive_count=message["receive_count"],
            sent_at=message["sent_at"],
        )

    def delete(self, queue_url: str, receipt: str) -> None:
        """Delete a received message; an unknown receipt is ignored, as SQS does."""
        with self._lock:
            self._queue(queue_url).in_flight.pop(receipt, None)

    def change_visibility(self, queue_url: str, receipt: str, seconds: int) -> None:
        """Make a received message visible again after ``seconds``."""
        with self._lock:
            queue = self._queue(queue_url)
            if receipt not in queue.in_flight:
                raise MessageGone(f"receipt handle on {queue_url} is no longer valid")
            _, message = queue.in_flight[receipt]
            queue.in_flight[receipt] = (time.monotonic() + seconds, message)
            if seconds <= 0:
                self._restore_expired(queue_url, queue)

    def queue_url(self, name_or_url: str) -> str:
        """Return the queue's name, which is its URL in memory."""
        with self._lock:
            self._queue(name_or_url)
        return name_or_url

    def get_attributes(self, queue_url: str) -> dict[str, str]:
        """Return the queue's attributes, with its approximate counts."""
        with self._lock:
            queue = self._queue(queue_url)
            attributes = dict(queue.attributes)
            attributes["ApproximateNumberOfMessages"] = str(
                self._channel._size(queue_url)
            )
            attributes["ApproximateNumberOfMessagesNotVisible"] = str(
                len(queue.in_flight)
            )
        attributes["QueueArn"] = f"arn:aws:sqs:memory:000000000000:{queue_url}"
        return attributes

    def create_queue(self, name: str, attributes: Mapping[str, str]) -> str:
        """Create a memory queue, or give an existing one these attributes.

        Unlike SQS, an existing memory queue takes the new attributes (and
        loses its redrive policy until it is set again), so that an app's
        explicit `create_queues` wins over the defaults of its first use.
        """
        with self._lock:
            if name in self._queues:
                self._queues[name].attributes = dict(attributes)
            else:
                self._queues[name] = _MemoryQueue(attributes=dict(attributes))
        return name

    def set_attributes(self, queue_url: str, attributes: Mapping[str, str]) -> None:
        """Change a memory queue's attributes."""
        with self._lock:
            self._queue(queue_url).attributes.update(attributes)

    def purge(self, queue_url: str) -> None:
        """Delete every message of a memory queue."""
        with self._lock:
            queue = self._queue(queue_url)
            queue.in_flight.clear()
            self._channel._purge(queue_url)

    def _queue(self, name: str) -> _MemoryQueue:
        try:
            return self._queues[name]
        except KeyError:
            raise QueueNotFound(f"memory queue {name!r} does not exist") from None

    def close(self) -> None:
        """Release kombu's memory connection."""
        self._connection.release()

    def messages(self, queue_url: str) -> Sequence[dict[str, Any]]:
        """Return the visible messages of a queue without receiving them (tests)."""
        from kombu.transport.memory import Channel

        with self._lock:
            backing = Channel.queues.get(queue_url)
            return list(backing.queue) if backing is not None else []


def _name_of_arn(arn: str) -> str:
    return arn.rsplit(":", 1)[-1]
