"""Celery 5.7 on its SQS broker, configured the way Celery's docs advise.

- The broker URL names the local endpoint (``sqs://KEY:SECRET@127.0.0.1:PORT``)
  with ``is_secure`` off; Celery has no SQS result backend, so results are
  ignored and the task publishes its answer to a response queue itself.
- ``task_acks_late``: a message is deleted only after its task ran.
- ``worker_prefetch_multiplier`` from ``BENCH_CELERY_PREFETCH``: the optimizing
  guide's advice is a large multiplier (64) for many short tasks and 1 for
  long ones.
- Everything else is Celery's default (SQS long poll 10 s, polling interval
  1 s, visibility timeout 30 min).

Run as ``celery -A benchmarks.apps.celery_app worker -Q <requests queue>``.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import quote

import httpx
from celery import Celery

from benchmarks.apps import common

REQUESTS, RESPONSES = common.queue_names()

BROKER_URL = (
    f"sqs://{quote(common.ACCESS_KEY, safe='')}:{quote(common.SECRET_KEY, safe='')}"
    f"@127.0.0.1:{common.sqs_port()}"
)
TRANSPORT_OPTIONS: dict[str, Any] = {"region": common.REGION, "is_secure": False}

app = Celery("bench", broker=BROKER_URL)
app.conf.update(
    broker_transport_options=TRANSPORT_OPTIONS,
    broker_connection_retry_on_startup=True,
    task_default_queue=REQUESTS,
    task_acks_late=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "4")),
)

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


@app.task(name="bench.handle")  # type: ignore[untyped-decorator]
def handle(request_id: str, chat_request: dict[str, Any]) -> None:
    """Answer a chat request and publish the answer to the response queue."""
    if common.mode() == "llm":
        reply = client().post("/v1/chat/completions", json=chat_request)
        reply.raise_for_status()
        response = reply.json()
    else:
        response = common.noop_completion()
    app.send_task("bench.answer", args=[request_id, response], queue=RESPONSES)


@app.task(name="bench.answer")  # type: ignore[untyped-decorator]
def answer(request_id: str, response: dict[str, Any]) -> None:
    """The answer's task name; the submitter reads these messages itself."""
