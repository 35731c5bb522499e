"""The wire format over a real SQS endpoint, and bodies written by other producers."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from asyncllm import (
    AsyncLLM,
    AsyncRequest,
    AsyncResponse,
    ChatResponse,
    InvalidMessage,
    PayloadTooLarge,
    decode_request,
    encode,
)
from asyncllm._wire import attribute_values, peek_identity

from .conftest import CHAT, test_queue_options
from .corpus import (
    SQS_LIMIT,
    BuiltCase,
    Case,
    completions,
    foreign_attributes,
    foreign_case,
    json_difference,
    long_context_request,
    oversized_requests,
    valid_requests,
)
from .support import depth, receive

GO_BODY = (
    '{"ID":"01939a4e-7c1d-7b3a-9f2e-5d8c4b1a0e67","TenantID":"acme-freight",'
    '"Request":{"model":"gpt-4o-mini","messages":[{"role":"user","content":'
    '"Compare \\u003cb\\u003ebay 3\\u003c/b\\u003e \\u0026 bay 4"}],'
    '"seed":9007199254740993},"Provider":"openai","Callback":'
    '"https://hooks.example.net/done?tenant=acme\\u0026sig=k7Q2",'
    '"CreatedAt":"2026-12-04T10:15:30.123456789Z","Handler":"","Tags":null}'
)


def request_queue_body(app: AsyncLLM, sqs_client: Any) -> tuple[str, dict[str, str]]:
    """Receive the one message on the app's request queue: raw body, attributes."""
    url = app.broker.queue_url(app.settings.request_queue)
    messages = receive(sqs_client, url)
    assert len(messages) == 1
    message = messages[0]
    return message["Body"], attribute_values(message.get("MessageAttributes", {}))


def go_body(**changes: Any) -> str:
    """The Go gateway's body, with some fields changed."""
    return json.dumps({**json.loads(GO_BODY), **changes})


# -- requests through the request queue ----------------------------------------


@pytest.mark.parametrize("case", valid_requests())
def test_a_valid_request_crosses_sqs_unchanged(
    case: Case, make_app: Any, sqs_client: Any
) -> None:
    app = make_app()

    handle = app.submit(case.data, tenant_id="acme", request_id=f"req-{case.path.stem}")
    body, attributes = request_queue_body(app, sqs_client)
    received = decode_request(body, attributes)

    assert received.id == handle.id
    assert attributes["TenantID"] == "acme"
    assert attributes["RequestID"] == handle.id
    assert json_difference(received.request.to_wire(), case.data) is None
    assert json_difference(json.loads(body)["request"], case.data) is None


def test_exact_numbers_keys_and_tool_arguments_cross_sqs_byte_for_byte(
    make_app: Any, sqs_client: Any
) -> None:
    arguments = '{"station":"S\\u00e3o Vicente",\n "note":"quote: \\"spring\\""}'
    call = {"id": "c1", "type": "function"}
    chat = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "Tides?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {**call, "function": {"name": "t", "arguments": arguments}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "{}"},
        ],
        "seed": 2**53 + 1,
        "logit_bias": {"00042": -1},
        "top_p": 1,
        "temperature": 0.7,
        "stop": None,
    }
    app = make_app()

    app.submit(chat, tenant_id="acme")
    body, attributes = request_queue_body(app, sqs_client)

    assert '"seed":9007199254740993' in body
    assert '"00042":-1' in body
    received = decode_request(body, attributes).request
    assert received.seed == 2**53 + 1
    function = received.messages[1].tool_calls[0].function  # type: ignore[index]
    assert function is not None
    assert function.arguments == arguments
    assert received.to_wire()["stop"] is None
    assert "max_tokens" not in received.to_wire()


def test_a_long_context_request_crosses_sqs_with_its_sha256_intact(
    make_app: Any, sqs_client: Any
) -> None:
    chat, document = long_context_request(300_000)
    app = make_app()

    app.submit(chat, tenant_id="acme")
    body, attributes = request_queue_body(app, sqs_client)

    assert 256 * 1024 < len(body.encode("utf-8")) < SQS_LIMIT
    received = decode_request(body, attributes).request.to_wire()
    text = received["messages"][1]["content"][0]["text"]
    assert text.endswith(document)
    digest = hashlib.sha256(document.encode("utf-8")).hexdigest()
    assert digest == received["metadata"]["doc_sha256"]
    assert json_difference(received, chat) is None


def test_a_request_over_one_mebibyte_is_refused_at_submit_naming_its_size(
    make_app: Any, sqs_client: Any
) -> None:
    chat, _ = long_context_request(1_200_000)
    app = make_app()
    url = app.broker.queue_url(app.settings.request_queue)

    with pytest.raises(PayloadTooLarge) as refused:
        app.submit(chat, tenant_id="acme", request_id="too-big")

    size = refused.value.size
    assert size > SQS_LIMIT
    assert size >= len(json.dumps(chat, ensure_ascii=False).encode()) // 2
    assert f"{size:,} B" in refused.value.reason
    assert f"{SQS_LIMIT:,} B" in refused.value.reason
    assert depth(sqs_client, url) == 0


@pytest.mark.parametrize("case", oversized_requests())
def test_an_oversized_corpus_request_is_refused_at_submit(
    case: Case | BuiltCase, make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    url = app.broker.queue_url(app.settings.request_queue)

    with pytest.raises(PayloadTooLarge) as refused:
        app.submit(case.data, tenant_id="acme")

    assert refused.value.size > refused.value.limit == SQS_LIMIT
    assert f"{refused.value.size:,}" in refused.value.reason
    assert depth(sqs_client, url) == 0


def test_the_size_limit_is_read_from_the_queue(
    app_settings: dict[str, Any], sqs_client: Any
) -> None:
    app = AsyncLLM("small-queue", **app_settings)
    app.create_queues(test_queue_options(max_message_bytes=262_144))
    chat, _ = long_context_request(300_000)
    try:
        with pytest.raises(PayloadTooLarge) as refused:
            app.submit(chat, tenant_id="acme")
        app.submit(CHAT, tenant_id="acme")
    finally:
        app.close()

    assert refused.value.limit == 262_144
    assert "262,144 B" in refused.value.reason


def test_a_lone_surrogate_is_refused_at_submit_and_nothing_is_sent(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    chat = {"model": "m", "messages": [{"role": "user", "content": "Bay 7 \ud83d"}]}

    with pytest.raises(InvalidMessage) as refused:
        app.submit(chat, tenant_id="acme")

    assert "messages[0].content" in refused.value.reason
    assert depth(sqs_client, app.broker.queue_url(app.settings.request_queue)) == 0


# -- responses through the response queue --------------------------------------


@pytest.mark.parametrize("case", completions())
def test_a_completion_crosses_the_response_queue_unchanged(
    case: Case, make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    url = app.broker.queue_url(app.settings.response_queue)
    completion = ChatResponse.model_validate(case.data)
    answer = AsyncResponse(request_id="r-1", tenant_id="acme", response=completion)

    sqs_client.send_message(QueueUrl=url, MessageBody=encode(answer))
    found = app.get_result("r-1", tenant_id="acme", timeout=10)

    assert found.response is not None
    assert json_difference(found.response.to_wire(), case.data) is None
    assert [c.index for c in found.response.choices] == [
        c.get("index", 0) for c in case.data["choices"]
    ]


# -- bodies from other producers -------------------------------------------------


def test_a_go_gateway_body_decodes_through_its_field_names() -> None:
    request = decode_request(GO_BODY, {"TenantID": "acme-freight"})

    assert request.id == "01939a4e-7c1d-7b3a-9f2e-5d8c4b1a0e67"
    assert request.tenant_id == "acme-freight"
    assert request.provider == "openai"
    assert request.callback == "https://hooks.example.net/done?tenant=acme&sig=k7Q2"
    assert request.created_at == "2026-12-04T10:15:30.123456789Z"
    assert request.handler is None
    assert request.request.messages[0].content == "Compare <b>bay 3</b> & bay 4"
    assert request.request.seed == 2**53 + 1


def test_go_zero_time_in_created_at_reads_as_unset() -> None:
    request = decode_request(go_body(CreatedAt="0001-01-01T00:00:00Z"))

    assert request.created_at is None


def test_the_go_gateway_corpus_body_decodes_with_its_attributes() -> None:
    case = foreign_case("01-")
    assert case is not None, "the corpus has no Go gateway body"
    raw = json.loads(case.text)
    created_at = raw.get("CreatedAt")

    request = decode_request(case.text, attribute_values(foreign_attributes(case)))

    assert request.id == raw["ID"]
    assert request.tenant_id == raw["TenantID"]
    assert request.created_at == (
        None if created_at == "0001-01-01T00:00:00Z" else created_at
    )
    assert json_difference(request.request.to_wire(), raw["Request"]) is None
    contents = " ".join(str(m.content) for m in request.request.messages)
    # The body escapes <, > and & the way Go does; decoded, they are plain.
    assert "\\u003c" in case.text
    assert "<" in contents
    assert "&" in contents
    assert "\\u003c" not in contents


def test_a_base64_looking_token_is_refused_as_not_json_rather_than_decoded() -> None:
    case = foreign_case("04-")
    body = case.text if case is not None else "XX17ei1QWmlkazE4\n"

    with pytest.raises(InvalidMessage) as refused:
        decode_request(body)

    assert "not JSON" in refused.value.reason


def test_a_body_with_trailing_garbage_is_refused() -> None:
    case = foreign_case("05-")
    body = case.text if case is not None else GO_BODY + '{"ID":"01939a'

    with pytest.raises(InvalidMessage) as refused:
        decode_request(body)

    assert "not JSON" in refused.value.reason
    assert "Extra data" in refused.value.reason


def test_a_body_with_a_top_level_properties_key_is_refused_with_a_reason() -> None:
    case = foreign_case("03-")
    body = (
        case.text
        if case is not None
        else json.dumps(
            {
                "properties": {"source": "x"},
                "request_id": "r",
                "tenant_id": "t",
                "request": CHAT,
            }
        )
    )
    attributes = attribute_values(foreign_attributes(case)) if case else {}

    with pytest.raises(InvalidMessage) as refused:
        decode_request(body, attributes)

    assert refused.value.reason.startswith(("id:", "TenantID attribute"))


def test_a_tenant_attribute_that_disagrees_with_the_body_is_refused() -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(GO_BODY, {"TenantID": "someone-else"})

    assert "TenantID attribute 'someone-else'" in refused.value.reason
    assert "'acme-freight'" in refused.value.reason


def test_a_request_id_attribute_that_disagrees_with_the_body_is_refused() -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(GO_BODY, {"RequestID": "another-id"})

    assert "RequestID attribute 'another-id'" in refused.value.reason


def test_a_body_with_both_field_name_schemas_is_refused_as_ambiguous() -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(go_body(tenant_id="acme-freight"))

    assert "ambiguous" in refused.value.reason


def test_a_body_of_an_unknown_schema_is_refused_listing_its_keys() -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(json.dumps({"Tenant": "acme", "Prompt": "hi"}))

    assert "unknown envelope schema" in refused.value.reason
    assert "Prompt" in refused.value.reason


def nested(levels: int) -> str:
    """A request body whose metadata nests objects ``levels`` deep in all."""
    inner = '{"a":' * (levels - 2) + "1" + "}" * (levels - 2)
    return json.dumps(
        {"id": "r1", "tenant_id": "acme", "request": {**CHAT, "x": "INNER"}}
    ).replace('"INNER"', inner)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            '{"id":"r1","tenant_id":"acme","tenant_id":"globex","request":{}}',
            id="two-tenants",
        ),
        pytest.param(
            '{"ID":"r1","TenantID":"acme","Request":{"model":"m","model":"n",'
            '"messages":[{"role":"user","content":"hi"}]}}',
            id="two-models-inside",
        ),
    ],
)
def test_a_key_given_twice_in_one_object_is_refused_naming_it(body: str) -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(body)

    assert "appears twice" in refused.value.reason
    assert peek_identity(body) == (None, None)


def test_a_body_a_hundred_levels_deep_is_accepted() -> None:
    request = decode_request(nested(100))

    assert request.id == "r1"


@pytest.mark.parametrize("levels", [101, 5_000, 100_000])
def test_a_body_nested_deeper_than_a_hundred_levels_is_refused_naming_the_limit(
    levels: int,
) -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(nested(levels))

    assert "at most 100" in refused.value.reason
    assert peek_identity(nested(levels)) == (None, None)


def test_a_request_nested_too_deep_is_refused_at_submit(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    url = app.broker.queue_url(app.settings.request_queue)
    chat = {**CHAT, "metadata_tree": json.loads(nested(120))}

    with pytest.raises(InvalidMessage) as refused:
        app.submit(chat, tenant_id="acme")

    assert "levels deep" in refused.value.reason
    assert depth(sqs_client, url) == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param("[1, 2]", "JSON list", id="array"),
        pytest.param('"text"', "JSON str", id="string"),
        pytest.param(b"\xff\xfe{}", "not UTF-8", id="not-utf8"),
        pytest.param('{"id": NaN}', "not JSON", id="nan"),
        pytest.param("", "not JSON", id="empty"),
    ],
)
def test_a_body_that_is_not_one_json_object_is_refused(
    body: str | bytes, reason: str
) -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(body)

    assert reason in refused.value.reason


def test_a_number_request_id_attribute_keeps_its_exact_digits() -> None:
    attributes = {
        "RequestID": {"DataType": "Number", "StringValue": "90071992547409931234"},
        "TenantID": {"DataType": "String.tenant", "StringValue": "acme"},
        "Trace": {"DataType": "Binary", "BinaryValue": b"\x00"},
    }

    values = attribute_values(attributes)

    assert values == {"RequestID": "90071992547409931234", "TenantID": "acme"}


def test_a_number_attribute_from_sqs_keeps_its_digits_and_matches_the_body(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    url = app.broker.queue_url(app.settings.request_queue)
    body = json.dumps(
        {"id": "90071992547409931234", "tenant_id": "acme", "request": CHAT}
    )
    sqs_client.send_message(
        QueueUrl=url,
        MessageBody=body,
        MessageAttributes={
            "RequestID": {"DataType": "Number", "StringValue": "90071992547409931234"},
            "TenantID": {"DataType": "String.uuid", "StringValue": "acme"},
        },
    )

    messages = app.broker.receive(url, 1, 5)
    values = attribute_values(messages[0].attributes)
    request = decode_request(messages[0].body, values)

    assert values["RequestID"] == "90071992547409931234"
    assert request.id == "90071992547409931234"


def test_a_body_sent_by_boto3_arrives_as_the_exact_text(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    url = app.broker.queue_url(app.settings.request_queue)
    sqs_client.send_message(QueueUrl=url, MessageBody="XX17ei1QWmlkazE4")

    messages = app.broker.receive(url, 1, 5)

    assert [m.body for m in messages] == ["XX17ei1QWmlkazE4"]


def test_a_go_request_round_trips_into_our_schema() -> None:
    request = decode_request(GO_BODY)

    wire = json.loads(encode(request))

    assert wire["id"] == request.id
    assert wire["tenant_id"] == "acme-freight"
    assert wire["created_at"] == "2026-12-04T10:15:30.123456789Z"
    assert "TenantID" not in wire
    assert decode_request(encode(request)).to_wire() == request.to_wire()
    assert isinstance(AsyncRequest.model_validate(wire), AsyncRequest)


def test_characters_sqs_refuses_in_a_body_still_cross_sqs_unchanged(
    make_app: Any, sqs_client: Any
) -> None:
    text = "nul\x00 unit\x1f nonchars\ufffe\uffff sep\u2028 astral\U0001d400\U0002000b"
    chat = {"model": "m", "messages": [{"role": "user", "content": text}]}
    app = make_app()

    app.submit(chat, tenant_id="acme")
    body, attributes = request_queue_body(app, sqs_client)

    assert "\ufffe" not in body
    assert "\uffff" not in body
    assert decode_request(body, attributes).request.messages[0].content == text
