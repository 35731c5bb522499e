"""Settings: one frozen object, filled from arguments and the environment."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from ._errors import ConfigurationError

__all__ = ["ENVIRONMENT", "Settings", "default_result_store"]

#: Environment variable → setting name. The ``SQS_*`` and ``AWS_REGION`` names
#: keep the original gateway's deployment settings working unchanged.
ENVIRONMENT: dict[str, str] = {
    "ASYNCLLM_BROKER_URL": "broker_url",
    "ASYNCLLM_SQS_ENDPOINT_URL": "endpoint_url",
    "AWS_REGION": "region",
    "SQS_REQUEST_QUEUE_URL": "request_queue",
    "SQS_RESPONSE_QUEUE_URL": "response_queue",
    "ASYNCLLM_REQUEST_QUEUE": "request_queue",
    "ASYNCLLM_RESPONSE_QUEUE": "response_queue",
    "ASYNCLLM_DEAD_LETTER_QUEUE": "dead_letter_queue",
    "ASYNCLLM_DEAD_LETTER_QUEUE_URL": "dead_letter_queue",
    "ASYNCLLM_RESULT_STORE": "result_store",
    "ASYNCLLM_LEDGER": "ledger",
    "ASYNCLLM_RESULT_TTL_SECONDS": "result_ttl_seconds",
    "ASYNCLLM_TENANT_ID": "default_tenant",
    "ASYNCLLM_WAIT_TIME_SECONDS": "wait_time_seconds",
}

_LOCAL_CREDENTIALS = ("asyncllm-local", "asyncllm-local")


def _state_file(name: str) -> str:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    path = (Path(base) / "asyncllm" / name).absolute()
    return f"sqlite:///{path}"


def default_result_store() -> str:
    """Return the default result store URL: a SQLite file in the user's state dir."""
    return _state_file("results.sqlite3")


@dataclass(frozen=True)
class Settings:
    """Everything an app needs to reach its queues and its result store.

    Build it with `Settings.from_env`, which reads the variables in
    `ENVIRONMENT` and lets keyword arguments override them.
    """

    #: ``sqs://`` for AWS (credentials from the usual AWS chain),
    #: ``sqs://KEY:SECRET@HOST:PORT`` for a local endpoint, or ``memory://``.
    broker_url: str = "sqs://"
    #: A local SQS endpoint such as ``http://127.0.0.1:9324``; overrides the
    #: host in ``broker_url``.
    endpoint_url: str | None = None
    #: The AWS region of the queues.
    region: str = "us-east-1"
    #: The request queue, by URL or by name.
    request_queue: str = "asyncllm-requests"
    #: The response queue, by URL or by name.
    response_queue: str = "asyncllm-responses"
    #: The request queue's dead-letter queue; None reads it from the request
    #: queue's RedrivePolicy.
    dead_letter_queue: str | None = None
    #: Where looked-up responses are kept: ``sqlite:///PATH`` or ``memory://``.
    result_store: str = dataclasses.field(default_factory=default_result_store)
    #: How long a result is kept after its last change, in seconds (7 days).
    result_ttl_seconds: int = 604_800
    #: Where workers remember answered request ids: ``sqlite:///PATH``,
    #: ``memory://`` or ``none://``; None picks ``memory://`` for the memory
    #: broker and a SQLite file in the user's state dir otherwise.
    ledger: str | None = None
    #: The tenant used by `AsyncLLM.submit` when none is given.
    default_tenant: str = "default"
    #: How long one receive call waits for messages (SQS long polling), 0-20 s.
    wait_time_seconds: int = 20

    def __post_init__(self) -> None:
        if self.transport not in ("sqs", "memory"):
            message = (
                f"broker_url {self.broker_url!r} is not supported; use sqs:// "
                "(AWS or a local endpoint) or memory://"
            )
            raise ConfigurationError(message)
        if not 0 <= self.wait_time_seconds <= 20:
            message = f"wait_time_seconds={self.wait_time_seconds} must be 0 to 20"
            raise ConfigurationError(message)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Read settings from the environment, then apply ``overrides``.

        Args:
            env: The variables to read. Defaults to `os.environ`.
            **overrides: Setting values that win over the environment; None
                values are ignored.

        Returns:
            The settings.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("AWS_DEFAULT_REGION"):
            values["region"] = env["AWS_DEFAULT_REGION"]
        for variable, name in ENVIRONMENT.items():
            if env.get(variable):
                values[name] = env[variable]
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("wait_time_seconds", "result_ttl_seconds"):
            if name in values:
                values[name] = _as_int(values[name])
        return cls(**values)

    @property
    def transport(self) -> str:
        """The broker's kind: ``sqs`` or ``memory``."""
        return urlsplit(self.broker_url).scheme

    @property
    def is_local(self) -> bool:
        """True when the SQS endpoint is on this machine (loopback)."""
        host = urlsplit(self.endpoint_url or self.broker_url).hostname
        if host is None:
            return False
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def kombu_url(self) -> str:
        """Return the kombu connection URL for the SQS transport."""
        if self.endpoint_url is None:
            return self.broker_url
        endpoint = urlsplit(self.endpoint_url)
        user, password = self.credentials() or ("", "")
        auth = f"{_quote(user)}:{_quote(password)}@" if user else ""
        return f"sqs://{auth}{endpoint.netloc.rsplit('@', 1)[-1]}"

    def is_secure(self) -> bool:
        """True unless the endpoint is plain ``http://`` or a loopback host."""
        if self.endpoint_url is not None:
            return not self.endpoint_url.startswith("http:")
        return not self.is_local

    def credentials(self) -> tuple[str, str] | None:
        """Return explicit credentials, or None to use the AWS credential chain.

        A local endpoint with no credentials configured gets placeholder ones,
        so that boto3 never goes looking for an instance role.
        """
        parts = urlsplit(self.broker_url)
        if parts.username:
            return unquote(parts.username), unquote(parts.password or "")
        key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            return key, secret
        return _LOCAL_CREDENTIALS if self.is_local else None

    def ledger_url(self) -> str:
        """Return the ledger URL, resolving the default."""
        if self.ledger:
            return self.ledger
        if self.transport == "memory":
            return "memory://"
        return _state_file("ledger.sqlite3")

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some settings changed."""
        return dataclasses.replace(self, **changes)


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        message = f"expected a whole number of seconds, got {value!r}"
        raise ConfigurationError(message) from None


def _quote(text: str) -> str:
    return quote(text, safe="")
