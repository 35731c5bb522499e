"""The ceiling: a bare boto3 loop with batch calls and nothing else.

Receive up to 10 requests (long poll), answer each with the no-op completion,
send the answers with one SendMessageBatch and delete the requests with one
DeleteMessageBatch. No framework, no retries, no bookkeeping: the least work
any client can do per request on this endpoint. Stops on SIGTERM, or after
``BENCH_MAX_SECONDS`` in any case.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import boto3

from benchmarks.apps import common

_stopping = False


def _stop(*_: Any) -> None:
    global _stopping
    _stopping = True


def main() -> None:
    """Serve the request queue until SIGTERM."""
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sqs = boto3.client(
        "sqs", endpoint_url=common.endpoint_url(), region_name=common.REGION
    )
    requests_name, responses_name = common.queue_names()
    requests_url = sqs.get_queue_url(QueueName=requests_name)["QueueUrl"]
    responses_url = sqs.get_queue_url(QueueName=responses_name)["QueueUrl"]
    answer = common.noop_completion()
    deadline = time.monotonic() + float(os.environ.get("BENCH_MAX_SECONDS", "3600"))
    print("boto3 worker ready", flush=True)
    while not _stopping and time.monotonic() < deadline:
        reply = sqs.receive_message(
            QueueUrl=requests_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        messages = reply.get("Messages", [])
        if messages:
            _answer(sqs, responses_url, messages, answer)
            _delete(sqs, requests_url, messages)


def _answer(
    sqs: Any, queue_url: str, messages: list[dict[str, Any]], answer: dict[str, Any]
) -> None:
    entries = []
    for index, message in enumerate(messages):
        request = json.loads(message["Body"])
        body = {"id": request["id"], "response": answer}
        entries.append({"Id": str(index), "MessageBody": json.dumps(body)})
    sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)


def _delete(sqs: Any, queue_url: str, messages: list[dict[str, Any]]) -> None:
    entries = [
        {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
        for index, message in enumerate(messages)
    ]
    sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)


if __name__ == "__main__":
    main()
