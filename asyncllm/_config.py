"""Settings: one frozen object, filled from arguments and the environment."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
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
        for name in _RULES:
            value = getattr(self, name)
            object.__setattr__(self, name, _checked(name, value, name))

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

        Raises:
            ConfigurationError: A value is not usable; the message names the
                variable (or the keyword argument) it came from, the value and
                what a good one looks like.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        # Where each value came from, for errors: a variable, or the setting.
        sources: dict[str, str] = {}
        for variable, name in [("AWS_DEFAULT_REGION", "region"), *ENVIRONMENT.items()]:
            if env.get(variable):
                values[name], sources[name] = env[variable], variable
        for name, value in overrides.items():
            if value is not None:
                values[name], sources[name] = value, name
        for name, source in sources.items():
            if name in _RULES:
                values[name] = _checked(name, values[name], source)
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


class _Refused(ValueError):
    """A setting's value is not usable; the text says what a good one looks like."""


def _whole_seconds(value: Any, low: int, high: int | None = None) -> int | None:
    """Return ``value`` as whole seconds in ``[low, high]``, or None if it is not."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        return None
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        return None
    if seconds < low or (high is not None and seconds > high):
        return None
    return seconds


def _wait_time(value: Any) -> int:
    seconds = _whole_seconds(value, 0, 20)
    if seconds is None:
        raise _Refused("is not a whole number of seconds from 0 to 20; use e.g. 20")
    return seconds


def _result_ttl(value: Any) -> int:
    seconds = _whole_seconds(value, 1)
    if seconds is None:
        message = "is not a whole number of seconds above 0; use e.g. 604800 (7 days)"
        raise _Refused(message)
    return seconds


def _broker_url(value: Any) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("sqs", "memory"):
        message = "is not supported; use sqs:// (AWS or a local endpoint) or memory://"
        raise _Refused(message)
    return value


def _endpoint_url(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and _is_http_url(value)):
        return value
    message = "is not an http(s) URL with a host; use e.g. http://127.0.0.1:9324"
    raise _Refused(message)


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


#: The settings whose values are checked (and converted), by name.
_RULES: dict[str, Callable[[Any], Any]] = {
    "broker_url": _broker_url,
    "endpoint_url": _endpoint_url,
    "wait_time_seconds": _wait_time,
    "result_ttl_seconds": _result_ttl,
}


def _checked(name: str, value: Any, source: str) -> Any:
    """Return a setting's value, converted, or refuse it naming ``source``.

    Raises:
        ConfigurationError: The value is not usable; the message names
            ``source`` (a variable or the setting), the value and a fix.
    """
    try:
        return _RULES[name](value)
    except _Refused as exc:
        raise ConfigurationError(f"{source}={value!r} {exc}") from None


def _quote(text: str) -> str:
    return quote(text, safe="")
