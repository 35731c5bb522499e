"""dramatiq with dramatiq-sqs, with the broker's and the worker's defaults.

The broker gets the local endpoint and placeholder credentials explicitly;
queues are created by the broker under the run's namespace. The request actor
sends its answer as a message to a second actor's queue, which no worker
consumes: the submitter reads it with the broker's own consumer.

Run as ``dramatiq benchmarks.apps.dramatiq_app --queues requests``.
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import httpx
from dramatiq_sqs import SQSBroker

from benchmarks.apps import common

broker = SQSBroker(
    namespace=common.prefix(),
    endpoint_url=common.endpoint_url(),
    region_name=common.REGION,
    aws_access_key_id=common.ACCESS_KEY,
    aws_secret_access_key=common.SECRET_KEY,
)
dramatiq.set_broker(broker)

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def client() -> httpx.Client:
    """One HTTP client per process, shared by its threads."""
    global _client
    with _client_lock:
        if _client is None:
            size = common.concurrency()
            _client = httpx.Client(
                base_url=common.provider_url(),
                timeout=60.0,
                limits=httpx.Limits(
                    max_connections=size, max_keepalive_connections=size
                ),
            )
        return _client


@dramatiq.actor(queue_name="requests")
def handle(request_id: str, chat_request: dict[str, Any]) -> None:
    """Answer a chat request and send the answer to the response queue."""
    if common.mode() == "llm":
        reply = client().post("/v1/chat/completions", json=chat_request)
        reply.raise_for_status()
        response = reply.json()
    else:
        response = common.noop_completion()
    answer.send(request_id, response)


@dramatiq.actor(queue_name="responses")
def answer(request_id: str, response: dict[str, Any]) -> None:
    """The answer's actor; the submitter reads these messages itself."""
