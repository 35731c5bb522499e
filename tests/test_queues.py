"""Queue checks a worker makes before it receives anything."""

from __future__ import annotations

from typing import Any

import pytest

from asyncllm import QueueSetupError


def test_a_response_queue_that_is_the_request_queue_is_refused_naming_the_fix(
    make_app: Any, app_settings: dict[str, Any]
) -> None:
    make_app().check_queues()  # creates this test's queues
    app = make_app(response_queue=app_settings["request_queue"])

    with pytest.raises(QueueSetupError) as refused:
        app.check_queues()

    assert "are the same queue" in str(refused.value)
    assert "SQS_RESPONSE_QUEUE_URL" in str(refused.value)


def test_separate_queues_pass_the_check_and_are_described(make_app: Any) -> None:
    setup = make_app().check_queues()

    assert setup.request_url != setup.response_url
    assert setup.max_receive_count == 3
    assert setup.dead_letter_url.endswith("-dlq")
