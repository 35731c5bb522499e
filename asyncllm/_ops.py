"""Operations on the queues: status, dead-letter listing and redrive.

Redrive copies messages back to the request queue itself instead of using
SQS's message-move task: a move task takes every message of the queue and
cannot pick by tenant or id, it keeps the message attributes as they are
(asyncllm's own attempt and dead-letter attributes included), and not every
SQS-compatible endpoint offers it. A copy is sent before its original is
deleted, so a crash between the two leaves a duplicate, never a loss; the
worker's ledger answers a duplicate id once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ._broker import Broker, Received
from ._queues import QueueOptions, QueueSetup
from ._wire import (
    ATTR_FAILED_ATTEMPTS,
    ATTR_RATE_LIMITS,
    ATTR_REASON,
    attribute_values,
    count_value,
    peek_identity,
)

__all__ = ["DeadLetter", "QueueStatus", "dead_letters", "queue_status", "redrive"]

#: How long listed dead letters stay hidden while a command pages through them.
_HOLD_SECONDS = 60
_INTERNAL_ATTRIBUTES = (ATTR_REASON, ATTR_FAILED_ATTEMPTS, ATTR_RATE_LIMITS)


@dataclass(frozen=True)
class QueueStatus:
    """Counts and settings of one queue."""

    role: str
    url: str
    visible: int
    in_flight: int
    delayed: int
    oldest_age_seconds: float | None
    warnings: tuple[str, ...]


def queue_status(
    broker: Broker,
    setup: QueueSetup,
    oldest_age: Callable[[str], float | None] | None = None,
) -> list[QueueStatus]:
    """Describe the request, dead-letter and response queues.

    Args:
        broker: Where the queues are.
        setup: The queues, as `check_queues` found them.
        oldest_age: Returns the age of a queue's oldest message, when a
            metrics source (CloudWatch) is available.
    """
    roles = [
        ("requests", setup.request_url),
        ("dead letters", setup.dead_letter_url),
        ("responses", setup.response_url),
    ]
    return [
        _status(broker, role, url, oldest_age(url) if oldest_age else None)
        for role, url in roles
    ]


def _status(broker: Broker, role: str, url: str, age: float | None) -> QueueStatus:
    attributes = broker.get_attributes(url)
    return QueueStatus(
        role=role,
        url=url,
        visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
        in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        delayed=int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
        oldest_age_seconds=age,
        warnings=tuple(_check_settings(role, attributes)),
    )


def _check_settings(role: str, attributes: dict[str, str]) -> Iterator[str]:
    """Say where a queue's settings differ from the recommended ones."""
    recommended = QueueOptions()
    if role == "dead letters":
        return
    visibility = int(attributes.get("VisibilityTimeout", 30))
    if role == "requests" and visibility < 60:
        yield (
            f"visibility timeout {visibility} s is short for LLM calls "
            f"(recommended {recommended.visibility_timeout} s; the heartbeat "
            "extends it, but every extension is an API call)"
        )
    wait = int(attributes.get("ReceiveMessageWaitTimeSeconds", 0))
    best_wait = recommended.receive_wait_seconds
    if wait < best_wait:
        yield f"long polling {wait} s (recommended {best_wait} s)"
    policy = attributes.get("RedrivePolicy")
    if not policy:
        yield "no RedrivePolicy: messages that keep failing are never set aside"
    elif role == "requests":
        count = int(json.loads(policy)["maxReceiveCount"])
        if count != recommended.max_receive_count:
            yield (
                f"maxReceiveCount {count} (recommended "
                f"{recommended.max_receive_count}: three attempts)"
            )


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter queue, as `dlq list` shows it."""

    message: Received
    request_id: str | None
    tenant_id: str | None
    reason: str
    age_seconds: float | None
    attempts: int

    def summary(self, show_body: bool = False) -> dict[str, Any]:
        """The fields to print; the body (prompt text) only when asked."""
        line: dict[str, Any] = {
            "request_id": self.request_id,
            "tenant_id": self.tenant_id,
            "reason": self.reason,
            "attempts": self.attempts,
            "receives": self.message.receive_count,
            "age_seconds": round(self.age_seconds) if self.age_seconds else None,
        }
        if show_body:
            body = self.message.body
            line["body"] = body if isinstance(body, str) else body.decode("replace")
        return line


def _describe(message: Received, max_receive_count: int) -> DeadLetter:
    values = attribute_values(message.attributes)
    body_id, body_tenant = peek_identity(message.body)
    earlier = count_value(values.get(ATTR_FAILED_ATTEMPTS))
    if ATTR_REASON in values:
        # Sent here by a worker, which wrote down the attempts it made.
        reason = values[ATTR_REASON]
        attempts = earlier
    else:
        # Moved here by the redrive policy after its last receive.
        reason = "failed every attempt (redrive policy)"
        attempts = earlier + max_receive_count
    age = time.time() - message.sent_at if message.sent_at else None
    return DeadLetter(
        message=message,
        request_id=values.get("RequestID") or body_id,
        tenant_id=values.get("TenantID") or body_tenant,
        reason=reason,
        age_seconds=age,
        attempts=attempts,
    )


def dead_letters(
    broker: Broker,
    dlq_url: str,
    limit: int,
    wait_seconds: float = 1,
    max_receive_count: int = 3,
) -> list[DeadLetter]:
    """Read up to ``limit`` dead letters, holding them hidden while listing.

    The caller must pass the result to `release` when done, so the messages
    are visible again at once.

    Args:
        broker: Where the dead-letter queue is.
        dlq_url: The dead-letter queue.
        limit: The most letters to read.
        wait_seconds: Long-poll wait of each receive.
        max_receive_count: The request queue's ``maxReceiveCount``, the
            attempts of a letter the redrive policy moved.
    """
    found: list[DeadLetter] = []
    while len(found) < limit:
        batch = broker.receive(
            dlq_url, min(10, limit - len(found)), wait_seconds, _HOLD_SECONDS
        )
        if not batch:
            break
        found.extend(_describe(message, max_receive_count) for message in batch)
    return found


def release(broker: Broker, letters: list[DeadLetter]) -> None:
    """Make listed dead letters visible again, 10 to a call."""
    for start in range(0, len(letters), 10):
        batch = letters[start : start + 10]
        receipts = [letter.message.receipt for letter in batch]
        broker.change_visibility_batch(batch[0].message.queue_url, receipts, 0)


def redrive(broker: Broker, request_url: str, letter: DeadLetter) -> None:
    """Send a dead letter back to the request queue with a fresh attempt count.

    The copy keeps the body and the ``TenantID``/``RequestID`` attributes and
    drops asyncllm's attempt and reason attributes; then the dead letter is
    deleted.
    """
    attributes = {
        name: dict(value)
        for name, value in letter.message.attributes.items()
        if name not in _INTERNAL_ATTRIBUTES
    }
    broker.send(request_url, letter.message.body, attributes)
    broker.delete(letter.message.queue_url, letter.message.receipt)


def cloudwatch_oldest_age(settings: Any) -> Callable[[str], float | None]:
    """Return a reader of ApproximateAgeOfOldestMessage from CloudWatch.

    SQS reports a queue's oldest message age only as a CloudWatch metric, not
    as a queue attribute. The reader answers None when CloudWatch has no data
    (a local endpoint) or cannot be asked (no permission).
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    credentials = settings.credentials()
    client = boto3.client(
        "cloudwatch",
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=credentials[0] if credentials else None,
        aws_secret_access_key=credentials[1] if credentials else None,
    )

    def read(queue_url: str) -> float | None:
        now = datetime.now(timezone.utc)
        try:
            reply = client.get_metric_statistics(
                Namespace="AWS/SQS",
                MetricName="ApproximateAgeOfOldestMessage",
                Dimensions=[
                    {"Name": "QueueName", "Value": queue_url.rsplit("/", 1)[-1]}
                ],
                StartTime=now - timedelta(seconds=600),
                EndTime=now,
                Period=60,
                Statistics=["Maximum"],
            )
        except (BotoCoreError, ClientError):
            return None
        points = sorted(reply.get("Datapoints", []), key=lambda p: p["Timestamp"])
        return float(points[-1]["Maximum"]) if points else None

    return read
