"""Queue provisioning and the start-up check of a worker's queues."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from ._broker import Broker, QueueNotFound
from ._config import Settings
from ._errors import QueueSetupError
from ._wire import SQS_MAX_MESSAGE_BYTES

__all__ = ["QueueOptions", "QueueSetup", "check_queues", "create_queues"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueOptions:
    """The settings `create_queues` gives new queues.

    Defaults follow the original deployment: a 5-minute visibility timeout,
    4 days of retention, 20 s long polling and 3 receives before the
    dead-letter queue, which keeps its messages for 14 days.
    """

    #: Seconds a received message stays hidden from other consumers.
    visibility_timeout: int = 300
    #: Seconds a message is kept before SQS deletes it.
    retention_seconds: int = 345_600
    #: Default long-poll wait of receive calls, 0-20 s.
    receive_wait_seconds: int = 20
    #: Receives before SQS moves a message to the dead-letter queue.
    max_receive_count: int = 3
    #: Seconds the dead-letter queues keep their messages.
    dead_letter_retention_seconds: int = 1_209_600
    #: The largest message accepted, in bytes (1 KiB to 1 MiB).
    max_message_bytes: int = SQS_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class QueueSetup:
    """What a worker learned about its queues at start-up."""

    request_url: str
    response_url: str
    dead_letter_url: str
    visibility_timeout: int
    max_receive_count: int
    max_message_bytes: int


def dead_letter_name(queue_name: str) -> str:
    """Return the dead-letter queue name used for a queue."""
    if queue_name.endswith(".fifo"):
        return queue_name[: -len(".fifo")] + "-dlq.fifo"
    return queue_name + "-dlq"


def create_queues(
    broker: Broker, settings: Settings, options: QueueOptions | None = None
) -> QueueSetup:
    """Create the request, response and dead-letter queues if they are missing.

    Existing queues are left as they are, except that a request or response
    queue without a redrive policy gets one.

    Args:
        broker: Where to create them.
        settings: The queue names (a URL's last path segment is its name).
        options: The attributes of new queues. Defaults to `QueueOptions()`.

    Returns:
        The resulting setup, as `check_queues` reads it.
    """
    options = options or QueueOptions()
    for queue in (settings.request_queue, settings.response_queue):
        name = _name(queue)
        dlq_name = dead_letter_name(name)
        if queue == settings.request_queue and settings.dead_letter_queue:
            dlq_name = _name(settings.dead_letter_queue)
        dlq_attributes = _attributes(options, options.dead_letter_retention_seconds)
        dlq_url = broker.create_queue(dlq_name, dlq_attributes)
        url = broker.create_queue(name, _attributes(options, options.retention_seconds))
        _ensure_redrive(broker, url, dlq_url, options.max_receive_count)
        logger.info("queue %s ready (dead-letter queue %s)", url, dlq_url)
    return check_queues(broker, settings)


def _name(queue: str) -> str:
    """Return a queue's name from its name, URL or ARN."""
    return queue.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def _attributes(options: QueueOptions, retention: int) -> dict[str, str]:
    return {
        "VisibilityTimeout": str(options.visibility_timeout),
        "MessageRetentionPeriod": str(retention),
        "ReceiveMessageWaitTimeSeconds": str(options.receive_wait_seconds),
        "MaximumMessageSize": str(options.max_message_bytes),
    }


def _ensure_redrive(broker: Broker, url: str, dlq_url: str, max_receives: int) -> None:
    if "RedrivePolicy" in broker.get_attributes(url):
        return
    dlq_arn = broker.get_attributes(dlq_url)["QueueArn"]
    policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)}
    broker.set_attributes(url, {"RedrivePolicy": json.dumps(policy)})


def check_queues(broker: Broker, settings: Settings) -> QueueSetup:
    """Check that the queues exist and fit a worker, and describe them.

    Raises:
        QueueSetupError: A queue is missing, the request and response queues
            are one queue, or the request queue has no redrive policy; the
            message says how to fix it.
    """
    request_url = _existing(broker, settings.request_queue, "request")
    response_url = _existing(broker, settings.response_queue, "response")
    if request_url == response_url:
        raise QueueSetupError(
            f"the request and response queues are the same queue ({request_url}); "
            "set SQS_RESPONSE_QUEUE_URL (or ASYNCLLM_RESPONSE_QUEUE) to another "
            "queue"
        )
    attributes = broker.get_attributes(request_url)
    policy = _redrive_policy(request_url, attributes.get("RedrivePolicy"))
    dead_letter = settings.dead_letter_queue or policy["deadLetterTargetArn"]
    dead_letter_url = _existing(broker, _name(dead_letter), "dead-letter")
    return QueueSetup(
        request_url=request_url,
        response_url=response_url,
        dead_letter_url=dead_letter_url,
        visibility_timeout=int(attributes.get("VisibilityTimeout", "30")),
        max_receive_count=int(policy["maxReceiveCount"]),
        max_message_bytes=int(
            attributes.get("MaximumMessageSize", str(SQS_MAX_MESSAGE_BYTES))
        ),
    )


def _existing(broker: Broker, queue: str, role: str) -> str:
    try:
        url = broker.queue_url(queue)
        broker.get_attributes(url)
    except QueueNotFound:
        message = (
            f"the {role} queue {queue!r} does not exist; create it with "
            "'asyncllm queues create' or point the settings at an existing queue"
        )
        raise QueueSetupError(message) from None
    return url


def _redrive_policy(url: str, text: str | None) -> dict[str, str]:
    if not text:
        message = (
            f"the request queue {url} has no RedrivePolicy, so a request that keeps "
            "failing would be retried until it expires; run 'asyncllm queues "
            "create' or give it a dead-letter queue with maxReceiveCount 3"
        )
        raise QueueSetupError(message)
    policy: dict[str, str] = json.loads(text)
    return policy
