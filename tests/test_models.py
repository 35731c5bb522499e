"""Message models: every request and completion of the corpus, without a queue."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from asyncllm import (
    AsyncLLM,
    AsyncRequest,
    AsyncResponse,
    ChatRequest,
    ChatResponse,
    ErrorInfo,
    InvalidMessage,
    decode_request,
    decode_response,
    encode,
    parse_timestamp,
)

from .conftest import CHAT
from .corpus import (
    Case,
    completions,
    invalid_requests,
    json_difference,
    request_problem,
    valid_requests,
)

SEED = 2**53 + 1


def queued_body(request: dict[str, Any], **fields: Any) -> str:
    """Return a request queue body, written the way any producer could."""
    return json.dumps({"id": "r-1", "tenant_id": "acme", "request": request, **fields})


def with_messages(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "test-model", "messages": list(messages)}


# -- requests that must arrive unchanged --------------------------------------


@pytest.mark.parametrize("case", valid_requests())
def test_a_valid_request_survives_encode_and_decode_unchanged(case: Case) -> None:
    sent = AsyncRequest(tenant_id="acme", request=case.data)

    body = encode(sent)
    received = decode_request(body)

    assert json_difference(json.loads(body)["request"], case.data) is None
    assert json_difference(received.request.to_wire(), case.data) is None
    assert received.id == sent.id
    assert received.tenant_id == "acme"


def test_an_explicit_null_stays_null_and_an_absent_field_stays_absent() -> None:
    chat = {**CHAT, "temperature": None, "seed": None, "metadata": None}

    wire = decode_request(encode(AsyncRequest(tenant_id="acme", request=chat)))

    sent = wire.request.to_wire()
    assert sent["temperature"] is None
    assert sent["metadata"] is None
    assert "top_p" not in sent
    assert "tools" not in sent


def test_a_message_without_content_stays_without_content() -> None:
    chat = with_messages({"role": "user", "content": "Hi"}, {"role": "assistant"})

    wire = ChatRequest.model_validate(chat).to_wire()

    assert "content" not in wire["messages"][1]


def test_a_seed_above_two_to_the_53_keeps_every_digit() -> None:
    chat = {**CHAT, "seed": SEED}

    body = encode(AsyncRequest(tenant_id="acme", request=chat))

    assert '"seed":9007199254740993' in body
    assert decode_request(body).request.seed == SEED
    assert type(json.loads(body)["request"]["seed"]) is int


def test_numeric_looking_keys_and_strings_stay_strings() -> None:
    chat = {
        **CHAT,
        "logit_bias": {"00042": -1, "42": 1},
        "metadata": {"zip": "01234", "ratio": "0.10"},
    }

    request = decode_request(encode(AsyncRequest(tenant_id="acme", request=chat)))

    assert request.request.logit_bias == {"00042": -1, "42": 1}
    assert request.request.metadata == {"zip": "01234", "ratio": "0.10"}


def test_an_int_stays_an_int_and_a_float_stays_a_float() -> None:
    chat = {**CHAT, "temperature": 1.0, "top_p": 1, "frequency_penalty": 0.0}

    wire = json.loads(encode(AsyncRequest(tenant_id="acme", request=chat)))

    assert type(wire["request"]["temperature"]) is float
    assert type(wire["request"]["top_p"]) is int
    assert type(wire["request"]["frequency_penalty"]) is float


def test_tool_call_arguments_keep_their_exact_text() -> None:
    arguments = '{\n  "station": "S\\u00e3o Vicente",\n  "note": "quote: \\"x\\""\n}'
    function = {"name": "tides", "arguments": arguments}
    call = {"id": "call_1", "type": "function", "function": function}
    chat = with_messages(
        {"role": "user", "content": "Tides?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"high": 2.31}'},
    )

    request = decode_request(encode(AsyncRequest(tenant_id="acme", request=chat)))

    messages = request.request.messages
    assert messages[1].tool_calls is not None
    assert messages[1].tool_calls[0].function is not None
    assert messages[1].tool_calls[0].function.arguments == arguments
    assert messages[1].content is None
    assert messages[2].content == '{"high": 2.31}'


def test_unknown_fields_are_carried_at_every_level() -> None:
    chat = {
        **CHAT,
        "top_k": 40,
        "chat_template_kwargs": {"enable_thinking": False},
        "messages": [{"role": "user", "content": "Hi", "x_trace": [1, None]}],
    }

    wire = decode_request(encode(AsyncRequest(tenant_id="acme", request=chat)))

    assert json_difference(wire.request.to_wire(), chat) is None


def test_a_request_keeps_its_envelope_fields_through_encode_and_decode() -> None:
    sent = AsyncRequest(
        id="00042",
        tenant_id="acme",
        request=CHAT,
        provider="openai",
        callback="https://hooks.example.net/done?a=1&b=2",
        handler="summarise",
    )

    received = decode_request(encode(sent))

    assert received.to_wire() == sent.to_wire()
    assert received.id == "00042"
    assert received.created_at == sent.created_at


# -- requests that must be refused ---------------------------------------------


@pytest.mark.parametrize("case", invalid_requests())
def test_an_invalid_request_is_refused_at_submit_naming_the_field(
    case: Case, memory_app: AsyncLLM
) -> None:
    field = request_problem(case.data) or "request"

    with pytest.raises(InvalidMessage) as refused:
        memory_app.submit(case.data, tenant_id="acme")

    assert field in refused.value.reason
    assert memory_app.broker.messages(memory_app.settings.request_queue) == []


@pytest.mark.parametrize("case", invalid_requests())
def test_an_invalid_request_is_refused_when_decoded_naming_the_field(
    case: Case,
) -> None:
    field = request_problem(case.data) or "request"

    with pytest.raises(InvalidMessage) as refused:
        decode_request(queued_body(case.data))

    assert field in refused.value.reason


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        pytest.param([], "request.messages", id="no-messages"),
        pytest.param(
            [{"role": "bot", "content": "Hi"}], "request.messages[0].role", id="role"
        ),
        pytest.param(
            [{"role": "user", "content": 7}], "request.messages[0].content", id="int"
        ),
        pytest.param(
            [
                {"role": "user", "content": "Hi"},
                {"role": "tool", "content": "{}"},
            ],
            "request.messages[1]",
            id="tool-message-without-call-id",
        ),
        pytest.param(
            [
                {"role": "user", "content": "Hi"},
                {"role": "tool", "tool_call_id": "call_9", "content": "{}"},
            ],
            "messages[1].tool_call_id 'call_9'",
            id="tool-answer-to-no-call",
        ),
        pytest.param(
            [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": {"a": 1}},
                        }
                    ],
                }
            ],
            "request.messages[0].tool_calls[0].function.arguments",
            id="arguments-not-a-string",
        ),
    ],
)
def test_a_bad_message_list_is_refused_naming_the_message(
    messages: list[dict[str, Any]], field: str
) -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(queued_body(with_messages(*messages)))

    assert field in refused.value.reason


def test_a_request_without_a_model_is_refused_naming_model() -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(queued_body({"messages": CHAT["messages"]}))

    assert "request.model" in refused.value.reason


def test_streaming_is_refused_because_it_cannot_cross_a_queue() -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(queued_body({**CHAT, "stream": True}))

    assert "request.stream" in refused.value.reason
    assert "not supported" in refused.value.reason


def test_stream_false_is_carried_as_given() -> None:
    request = decode_request(queued_body({**CHAT, "stream": False}))

    assert request.request.to_wire()["stream"] is False


def test_a_lone_surrogate_is_refused_at_encode_naming_where() -> None:
    chat = with_messages({"role": "user", "content": "Bay 7 \ud83d"})

    with pytest.raises(InvalidMessage) as refused:
        encode(AsyncRequest(tenant_id="acme", request=chat))

    assert "lone surrogate at request.messages[0].content" in refused.value.reason


def test_a_lone_surrogate_escape_in_a_body_is_refused_when_decoded() -> None:
    body = queued_body(with_messages({"role": "user", "content": "[\ude00]"}))

    assert "\\ude00" in body
    with pytest.raises(InvalidMessage) as refused:
        decode_request(body)

    assert "lone surrogate" in refused.value.reason


def test_a_correct_surrogate_pair_escape_decodes_to_its_character() -> None:
    body = queued_body(with_messages({"role": "user", "content": "[\U0001f600]"}))

    assert "\\ud83d\\ude00" in body
    assert decode_request(body).request.messages[0].content == "[\U0001f600]"


def test_a_queued_request_must_carry_its_id() -> None:
    body = json.dumps({"tenant_id": "acme", "request": CHAT})

    with pytest.raises(InvalidMessage) as refused:
        decode_request(body)

    assert refused.value.reason.startswith("id:")


@pytest.mark.parametrize("tenant", ["", "   "])
def test_a_blank_tenant_is_refused(tenant: str) -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(json.dumps({"id": "r-1", "tenant_id": tenant, "request": CHAT}))

    assert "tenant_id" in refused.value.reason


def test_a_callback_that_is_not_an_http_url_is_refused() -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(queued_body(CHAT, callback="file:///etc/passwd"))

    assert "callback" in refused.value.reason


# -- timestamps -----------------------------------------------------------------


def test_a_nanosecond_timestamp_is_kept_as_text() -> None:
    stamp = "2026-12-04T10:15:30.123456789Z"

    request = decode_request(queued_body(CHAT, created_at=stamp))

    assert request.created_at == stamp
    assert json.loads(encode(request))["created_at"] == stamp
    assert parse_timestamp(stamp).microsecond == 123456


def test_go_zero_time_reads_as_unset() -> None:
    request = decode_request(queued_body(CHAT, created_at="0001-01-01T00:00:00Z"))

    assert request.created_at is None


def test_a_timestamp_that_is_not_rfc_3339_is_refused() -> None:
    with pytest.raises(InvalidMessage) as refused:
        decode_request(queued_body(CHAT, created_at="04/12/2026 10:15"))

    assert "created_at" in refused.value.reason


# -- completions -----------------------------------------------------------------


@pytest.mark.parametrize("case", completions())
def test_a_completion_round_trips_inside_an_async_response(case: Case) -> None:
    completion = ChatResponse.model_validate(case.data)
    sent = AsyncResponse(request_id="r-1", tenant_id="acme", response=completion)

    received = decode_response(encode(sent))

    assert received.ok
    assert received.response is not None
    assert json_difference(received.response.to_wire(), case.data) is None


@pytest.mark.parametrize("case", completions())
def test_a_completion_keeps_all_its_choices_in_order(case: Case) -> None:
    completion = ChatResponse.model_validate(case.data)

    indexes = [choice.index for choice in completion.choices]

    assert indexes == [choice.get("index", 0) for choice in case.data["choices"]]
    assert len(completion.choices) == len(case.data["choices"])


def test_three_choices_are_all_kept_even_when_one_is_cut_off() -> None:
    body = {
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}}
            for i, text in enumerate(["{}", '{"a": 1}', '{"a": ['])
        ]
    }
    body["choices"][2]["finish_reason"] = "length"

    completion = decode_response(
        encode(AsyncResponse(request_id="r", tenant_id="t", response=body))
    ).response

    assert completion is not None
    assert [c.message.content for c in completion.choices] == [
        "{}",
        '{"a": 1}',
        '{"a": [',
    ]
    assert completion.choices[2].finish_reason == "length"
    assert completion.content == "{}"


def test_a_refusal_is_exposed_as_refusal_not_as_content() -> None:
    refusal = "I can't help with forging a stamp."
    message = {"role": "assistant", "content": None, "refusal": refusal}
    body = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}

    completion = ChatResponse.model_validate(body)

    assert completion.refusal == refusal
    assert completion.content is None


@pytest.mark.parametrize("case", completions())
def test_a_refusal_in_the_corpus_is_exposed_as_refusal(case: Case) -> None:
    first = case.data["choices"][0]["message"]

    completion = ChatResponse.model_validate(case.data)

    assert completion.refusal == first.get("refusal")
    expected_content = first.get("content")
    assert completion.content == (
        expected_content if isinstance(expected_content, str) else None
    )


def test_a_null_finish_reason_is_accepted() -> None:
    message = {"role": "assistant", "content": "4"}
    body = {"choices": [{"index": 0, "message": message, "finish_reason": None}]}

    completion = ChatResponse.model_validate(body)

    assert completion.choices[0].finish_reason is None
    assert completion.to_wire()["choices"][0]["finish_reason"] is None


def test_a_response_needs_exactly_one_of_response_and_error() -> None:
    completion = ChatResponse.from_text("hi", model="echo")
    error = ErrorInfo(type="RuntimeError", message="down")

    with pytest.raises(ValidationError, match="exactly one"):
        AsyncResponse(request_id="r", tenant_id="t")
    with pytest.raises(ValidationError, match="exactly one"):
        AsyncResponse(request_id="r", tenant_id="t", response=completion, error=error)


def test_an_error_response_round_trips_with_a_null_response() -> None:
    error = ErrorInfo(
        type="TerminalError", message="too long", code="ctx", status_code=400
    )
    sent = AsyncResponse(request_id="r", tenant_id="t", error=error, attempts=3)

    body = json.loads(encode(sent))
    received = decode_response(encode(sent))

    assert body["response"] is None
    assert body["attempts"] == 3
    assert not received.ok
    assert received.error == error


def test_a_response_body_with_go_field_names_decodes() -> None:
    completion = ChatResponse.from_text("hi", model="echo").to_wire()
    body = {
        "RequestID": "r-9",
        "TenantID": "acme",
        "Response": completion,
        "Error": None,
        "CreatedAt": "2026-12-04T10:15:30.5Z",
        "Attempts": 2,
    }

    received = decode_response(json.dumps(body))

    assert received.request_id == "r-9"
    assert received.attempts == 2
    assert received.response is not None
    assert received.response.content == "hi"


def test_from_text_builds_a_one_choice_completion() -> None:
    completion = ChatResponse.from_text(
        "hello", model="echo", usage={"total_tokens": 3}
    )

    assert completion.content == "hello"
    assert completion.object == "chat.completion"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 3
    assert completion.to_wire()["choices"][0]["finish_reason"] == "stop"
