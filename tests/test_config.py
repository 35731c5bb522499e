"""Settings from the environment: values are checked, and errors name their source."""

from __future__ import annotations

import pytest

from asyncllm import ConfigurationError, Settings


@pytest.mark.parametrize(
    ("variable", "value", "fix"),
    [
        pytest.param("ASYNCLLM_WAIT_TIME_SECONDS", "abc", "0 to 20", id="wait-text"),
        pytest.param("ASYNCLLM_WAIT_TIME_SECONDS", "21", "0 to 20", id="wait-high"),
        pytest.param("ASYNCLLM_RESULT_TTL_SECONDS", "-5", "604800", id="ttl-negative"),
        pytest.param("ASYNCLLM_RESULT_TTL_SECONDS", "0", "604800", id="ttl-zero"),
        pytest.param(
            "ASYNCLLM_SQS_ENDPOINT_URL",
            "garbage",
            "http://127.0.0.1:9324",
            id="endpoint-no-scheme",
        ),
        pytest.param(
            "ASYNCLLM_SQS_ENDPOINT_URL",
            "ftp://127.0.0.1:9324",
            "http://127.0.0.1:9324",
            id="endpoint-ftp",
        ),
        pytest.param(
            "ASYNCLLM_SQS_ENDPOINT_URL",
            "http://127.0.0.1:port",
            "http://127.0.0.1:9324",
            id="endpoint-bad-port",
        ),
        pytest.param("ASYNCLLM_BROKER_URL", "garbage", "memory://", id="broker"),
    ],
)
def test_a_bad_variable_is_refused_naming_the_variable_its_value_and_a_fix(
    variable: str, value: str, fix: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({variable: value})

    message = str(refused.value)
    assert message.startswith(f"{variable}={value!r} ")
    assert fix in message


def test_good_variables_are_converted_to_their_settings() -> None:
    env = {
        "ASYNCLLM_WAIT_TIME_SECONDS": "0",
        "ASYNCLLM_RESULT_TTL_SECONDS": "60",
        "ASYNCLLM_SQS_ENDPOINT_URL": "http://localhost:9324",
    }

    settings = Settings.from_env(env)

    assert settings.wait_time_seconds == 0
    assert settings.result_ttl_seconds == 60
    assert settings.endpoint_url == "http://localhost:9324"


def test_a_bad_keyword_setting_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"^wait_time_seconds=30 "):
        Settings.from_env({"ASYNCLLM_WAIT_TIME_SECONDS": "5"}, wait_time_seconds=30)


def test_a_keyword_setting_wins_over_a_bad_variable() -> None:
    env = {"ASYNCLLM_RESULT_TTL_SECONDS": "-5"}

    settings = Settings.from_env(env, result_ttl_seconds=120)

    assert settings.result_ttl_seconds == 120


def test_settings_built_directly_are_checked_too() -> None:
    with pytest.raises(ConfigurationError, match=r"^result_ttl_seconds=-1 "):
        Settings(result_ttl_seconds=-1)
