"""The main job over a real SQS endpoint: submit → worker → response → lookup."""

from __future__ import annotations

import json
from typing import Any

from asyncllm import AsyncRequest, ChatResponse, Status

from .conftest import CHAT, running_worker


def echo_handler(request: AsyncRequest) -> ChatResponse:
    text = request.request.messages[-1].content
    assert isinstance(text, str)
    return ChatResponse.from_text(text[::-1], model="echo")


def test_a_submitted_request_is_answered_and_found_by_id(make_app: Any) -> None:
    app = make_app()
    app.handler(echo_handler)

    with running_worker(app):
        handle = app.submit(CHAT, tenant_id="acme")
        answer = handle.get(timeout=30)

    assert answer.content == CHAT["messages"][0]["content"][::-1]
    assert app.status(handle.id) is Status.COMPLETED
    assert app.get_result(handle.id, tenant_id="acme").attempts == 1


def test_a_response_message_is_plain_json_with_tenant_and_id_attributes(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    app.handler(echo_handler)
    response_url = app.broker.queue_url(app.settings.response_queue)

    with running_worker(app):
        handle = app.submit(CHAT, tenant_id="acme")
        reply = sqs_client.receive_message(
            QueueUrl=response_url, WaitTimeSeconds=10, MessageAttributeNames=["All"]
        )

    message = reply["Messages"][0]
    body = json.loads(message["Body"])
    assert body["request_id"] == handle.id
    assert body["tenant_id"] == "acme"
    assert body["error"] is None
    assert body["response"]["choices"][0]["message"]["role"] == "assistant"
    attributes = message["MessageAttributes"]
    assert attributes["TenantID"]["StringValue"] == "acme"
    assert attributes["RequestID"]["StringValue"] == handle.id
