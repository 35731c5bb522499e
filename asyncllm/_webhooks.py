"""Webhooks: signed, retried deliveries of an `AsyncResponse` to a callback URL.

When a request carries a ``callback`` URL, the worker that answered it POSTs
the `AsyncResponse` (the same JSON a lookup returns) to that URL, signed the
Standard Webhooks way:

- ``webhook-id``: the request id (the same on every retry, so a receiver can
  drop duplicates);
- ``webhook-timestamp``: the attempt's time, in whole seconds since the epoch;
- ``webhook-signature``: ``v1,`` then the base64 HMAC-SHA256 of
  ``"{webhook-id}.{webhook-timestamp}.{body}"`` under the tenant's secret.

A secret is written ``whsec_<base64>`` (the bytes are the decoded base64) or
as plain text (the bytes are its UTF-8). Receivers written in Python check a
delivery with `verify_webhook`.

Safety. A callback URL comes from a caller, so the sender treats it as
hostile: only ``https`` is used unless ``allow_http`` is set; the host's
addresses are resolved and checked *before* connecting, and loopback,
private, link-local, multicast, reserved, unspecified and cloud metadata
addresses (``169.254.169.254``, ``fd00:ec2::254``) are refused unless
allow-listed; the connection goes to the address that was checked, so the
name cannot be re-pointed between check and connect; redirects are not
followed; at most ``max_response_bytes`` of the answer are read; proxies from
the environment are ignored.

Delivery is retried with exponential backoff while the answer is not a 2xx,
for at most ``max_attempts`` attempts within ``retry_seconds``; ``410 Gone``
stops at once. Every attempt and outcome is logged (never the body) and
counted in `WebhookSender.counts`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ._errors import AsyncLLMError, ConfigurationError
from ._models import AsyncResponse
from ._version import __version__
from ._wire import encode

__all__ = [
    "AddressDecision",
    "UnsafeWebhookTarget",
    "WebhookDelivery",
    "WebhookError",
    "WebhookSender",
    "WebhookSettings",
    "WebhookTarget",
    "WebhookVerificationError",
    "check_address",
    "check_webhook_url",
    "resolve_webhook_target",
    "sign_webhook",
    "verify_webhook",
]

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud instance metadata endpoints: refused even for an allow-listed host name;
#: only an allow-listed network that contains them lets them through.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254")
)

#: The well-known NAT64 prefix (RFC 6052): its last 32 bits are an IPv4 address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

#: Environment variable → `WebhookSettings` field.
ENVIRONMENT: dict[str, str] = {
    "ASYNCLLM_WEBHOOK_SECRETS": "secrets",
    "ASYNCLLM_WEBHOOK_SECRET": "default_secret",
    "ASYNCLLM_WEBHOOK_ALLOW_HTTP": "allow_http",
    "ASYNCLLM_WEBHOOK_ALLOW": "allow",
    "ASYNCLLM_WEBHOOK_TIMEOUT_SECONDS": "timeout_seconds",
    "ASYNCLLM_WEBHOOK_RETRY_SECONDS": "retry_seconds",
    "ASYNCLLM_WEBHOOK_MAX_ATTEMPTS": "max_attempts",
    "ASYNCLLM_WEBHOOK_CA_BUNDLE": "ca_bundle",
}

_COUNTERS = (
    "scheduled",
    "attempts",
    "delivered",
    "failed_attempts",
    "gave_up",
    "refused",
    "no_secret",
    "abandoned",
)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:@+=-]{1,256}$")
_HOST_NAME = re.compile(r"^[a-z0-9.-]+$")


class WebhookError(AsyncLLMError):
    """A webhook could not be signed, checked or delivered."""


class UnsafeWebhookTarget(WebhookError, ValueError):
    """A callback URL points somewhere the sender must not connect to.

    Attributes:
        reason: Why, for example ``"10.0.0.7 is a private address"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WebhookVerificationError(WebhookError, ValueError):
    """A received webhook's headers or signature do not check out."""


@dataclass(frozen=True)
class _AllowList:
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class WebhookSettings:
    """How webhooks are signed, checked and retried.

    Build it from the environment with `WebhookSettings.from_env`.
    """

    #: Per-tenant signing secrets: tenant id → ``whsec_<base64>`` or raw text.
    secrets: Mapping[str, str] = field(default_factory=dict)
    #: The secret of tenants that have none of their own; None signs nothing
    #: for them, and their webhooks are not sent.
    default_secret: str | None = None
    #: Allow plain ``http://`` callbacks (for development only).
    allow_http: bool = False
    #: Networks (``10.1.0.0/16``, ``::1/128``) and host names whose
    #: non-public addresses may be called.
    allow: tuple[str, ...] = ()
    #: The longest one attempt may take, connect to last byte, in seconds.
    timeout_seconds: float = 10.0
    #: How long a delivery keeps retrying, in seconds.
    retry_seconds: float = 600.0
    #: The most attempts of one delivery.
    max_attempts: int = 10
    #: The delay before the second attempt; it doubles for each later one.
    initial_backoff_seconds: float = 1.0
    #: The longest delay between two attempts.
    max_backoff_seconds: float = 120.0
    #: How much of a receiver's answer is read, in bytes.
    max_response_bytes: int = 4096
    #: A PEM file of CA certificates for receivers with a private CA; None
    #: trusts the usual public CAs.
    ca_bundle: str | None = None
    _allow_list: _AllowList = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for tenant, secret in self.secrets.items():
            _secret_bytes(secret, f"the secret of tenant {tenant!r}")
        if self.default_secret is not None:
            _secret_bytes(self.default_secret, "ASYNCLLM_WEBHOOK_SECRET")
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts={self.max_attempts} must be >= 1")
        if self.ca_bundle is not None and not Path(self.ca_bundle).is_file():
            message = f"the webhook CA bundle {self.ca_bundle!r} is not a file"
            raise ConfigurationError(message)
        object.__setattr__(self, "_allow_list", _parse_allow_list(self.allow))

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> WebhookSettings:
        """Read the settings from the environment, then apply ``overrides``.

        ``ASYNCLLM_WEBHOOK_SECRETS`` names a JSON file ``{tenant: secret}``;
        ``ASYNCLLM_WEBHOOK_SECRET`` is the secret of every other tenant;
        ``ASYNCLLM_WEBHOOK_ALLOW`` is a comma-separated allow-list;
        ``ASYNCLLM_WEBHOOK_ALLOW_HTTP=1`` allows ``http://``.

        Args:
            env: The variables to read. Defaults to `os.environ`.
            **overrides: Field values that win over the environment.

        Raises:
            ConfigurationError: A variable or the secrets file is not usable.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for variable, name in ENVIRONMENT.items():
            if env.get(variable):
                values[name] = _from_text(name, env[variable], variable)
        values.update(overrides)
        return cls(**values)

    def secret_for(self, tenant_id: str) -> str | None:
        """Return the signing secret of a tenant, or None when it has none."""
        return self.secrets.get(tenant_id, self.default_secret)

    def replace(self, **changes: Any) -> WebhookSettings:
        """Return a copy with some settings changed."""
        return dataclasses.replace(self, **changes)


def _from_text(name: str, text: str, variable: str) -> Any:
    if name == "secrets":
        return _load_secrets(Path(text))
    if name == "allow_http":
        return text.strip().lower() in ("1", "true", "yes", "on")
    if name == "allow":
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if name in ("default_secret", "ca_bundle"):
        return text
    try:
        return int(text) if name == "max_attempts" else float(text)
    except ValueError:
        raise ConfigurationError(f"{variable}={text!r} is not a number") from None


def _load_secrets(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        message = f"cannot read the webhook secrets file {str(path)!r}: {exc}"
        raise ConfigurationError(message) from exc
    valid = isinstance(data, dict) and all(
        isinstance(key, str) and isinstance(value, str) for key, value in data.items()
    )
    if not valid:
        message = f"{str(path)!r} must hold one JSON object of tenant → secret text"
        raise ConfigurationError(message)
    return dict(data)


def _parse_allow_list(entries: tuple[str, ...]) -> _AllowList:
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        host = entry.strip().lower().rstrip(".")
        if not _HOST_NAME.match(host):
            message = f"webhook allow-list entry {entry!r} is neither a CIDR nor a host"
            raise ConfigurationError(message)
        hosts.add(host)
    return _AllowList(tuple(networks), frozenset(hosts))


# -- signing ---------------------------------------------------------------


def _secret_bytes(secret: str, what: str = "the webhook secret") -> bytes:
    if not secret:
        raise ConfigurationError(f"{what} is empty")
    if not secret.startswith("whsec_"):
        return secret.encode("utf-8")
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        message = f"{what} starts with 'whsec_' but the rest is not base64"
        raise ConfigurationError(message) from None
    if not key:
        raise ConfigurationError(f"{what} is empty")
    return key


def sign_webhook(
    secret: str, message_id: str, timestamp: int, body: bytes | str
) -> str:
    """Return the ``webhook-signature`` value of one delivery.

    Args:
        secret: ``whsec_<base64>`` or raw secret text.
        message_id: The ``webhook-id`` header.
        timestamp: The ``webhook-timestamp`` header, seconds since the epoch.
        body: The exact body bytes (text is encoded as UTF-8).

    Returns:
        ``v1,`` followed by the base64 HMAC-SHA256 of ``id.timestamp.body``.

    Raises:
        ConfigurationError: The secret is empty or not valid ``whsec_`` base64.
    """
    payload = body.encode("utf-8") if isinstance(body, str) else body
    signed = f"{message_id}.{timestamp}.".encode() + payload
    digest = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: float = 300,
) -> None:
    """Check a received webhook's signature and timestamp.

    Args:
        secret: The tenant's secret, ``whsec_<base64>`` or raw text.
        headers: The request's headers (names in any case).
        body: The raw request body, exactly as received.
        tolerance: How far the timestamp may be from now, in seconds.
            Defaults to 300.

    Raises:
        WebhookVerificationError: A header is missing, the timestamp is too
            old or too new, or no signature matches.
        ConfigurationError: The secret is empty or not valid ``whsec_`` base64.

    Example:
        In a receiver, with the body read as bytes before any parsing::

            verify_webhook(secret, request.headers, body)
    """
    found = {name.lower(): value for name, value in headers.items()}
    message_id, stamp, signatures = (
        _header(found, name)
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    )
    timestamp = _check_timestamp(stamp, tolerance)
    expected = sign_webhook(secret, message_id, timestamp, body).encode("ascii")
    for candidate in signatures.split():
        if hmac.compare_digest(candidate.encode("ascii", "replace"), expected):
            return
    raise WebhookVerificationError("no webhook-signature matches the body")


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise WebhookVerificationError(f"the {name} header is missing")
    return value


def _check_timestamp(text: str, tolerance: float) -> int:
    try:
        timestamp = int(text)
    except ValueError:
        message = f"webhook-timestamp {text!r} is not whole seconds"
        raise WebhookVerificationError(message) from None
    skew = time.time() - timestamp
    if abs(skew) > tolerance:
        when = "old" if skew > 0 else "far in the future"
        message = f"webhook-timestamp is {abs(skew):.0f} s {when} (over {tolerance:g})"
        raise WebhookVerificationError(message)
    return timestamp


def _message_id(request_id: str) -> str:
    """The ``webhook-id``: the request id, or a digest of one unfit for a header."""
    if _SAFE_ID.match(request_id):
        return request_id
    return "msg_" + hashlib.sha256(request_id.encode("utf-8")).hexdigest()[:32]


# -- the guard -------------------------------------------------------------


@dataclass(frozen=True)
class AddressDecision:
    """Whether the sender may connect to one address, and why.

    Attributes:
        address: The address checked.
        allowed: True when a connection may be made.
        reason: ``"public"``, ``"allow-listed ..."``, or what the address is
            (``"loopback"``, ``"private"``, ``"metadata"``, ...).
    """

    address: str
    allowed: bool
    reason: str


def check_address(
    address: str | IPAddress, settings: WebhookSettings, host: str | None = None
) -> AddressDecision:
    """Decide whether a webhook may be sent to an address.

    Public addresses are allowed. Loopback, private, link-local, multicast,
    reserved, unspecified and other non-public ones are refused unless a
    network of ``settings.allow`` contains them, or ``host`` is an
    allow-listed name (a host name never unlocks a metadata address). An
    IPv4 address inside IPv6 (mapped, 6to4 or NAT64) is judged as IPv4.

    Args:
        address: An IPv4 or IPv6 address.
        settings: The allow-list.
        host: The host name the address was resolved from, if any.

    Returns:
        The decision; this function never connects anywhere.
    """
    ip = ipaddress.ip_address(address)
    kind = _kind_of(_embedded_ipv4(ip) or ip)
    if kind is None:
        return AddressDecision(str(ip), True, "public")
    for network in settings._allow_list.networks:
        if ip in network or (_embedded_ipv4(ip) or ip) in network:
            return AddressDecision(str(ip), True, f"allow-listed network {network}")
    name = (host or "").lower().rstrip(".")
    if name in settings._allow_list.hosts and kind != "metadata":
        return AddressDecision(str(ip), True, f"allow-listed host {name}")
    return AddressDecision(str(ip), False, kind)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: mapped, 6to4 or NAT64."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour


def _kind_of(ip: IPAddress) -> str | None:
    """What makes an address non-public, or None for a public one."""
    checks = (
        ("metadata", ip in METADATA_ADDRESSES),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("non-public", not ip.is_global),
    )
    return next((kind for kind, matches in checks if matches), None)


@dataclass(frozen=True)
class WebhookTarget:
    """A checked callback: where to connect and what to call the host.

    Attributes:
        url: The callback URL as given.
        host: Its host name (IDNA-encoded), for TLS and the Host header.
        port: The TCP port.
        address: The checked address the connection goes to.
    """

    url: httpx.URL
    host: str
    port: int
    address: str

    @property
    def connect_url(self) -> httpx.URL:
        """The URL with its host replaced by the checked address."""
        return self.url.copy_with(host=self.address)

    @property
    def host_header(self) -> str:
        """The Host header: the name (and port) of the URL as given."""
        return self.url.netloc.decode("ascii")


def check_webhook_url(url: str, settings: WebhookSettings) -> httpx.URL:
    """Check what can be checked of a callback URL without resolving it.

    The scheme must be ``https`` (or ``http`` with ``allow_http``), a host
    must be named, and a host that is an address literal must pass
    `check_address`.

    Raises:
        UnsafeWebhookTarget: The URL must not be called; the reason says why.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeWebhookTarget(f"callback is not a valid URL: {exc}") from None
    allowed = ("https", "http") if settings.allow_http else ("https",)
    if parsed.scheme not in allowed:
        hint = "" if settings.allow_http else " (http needs allow_http)"
        message = f"callback scheme {parsed.scheme!r} is not allowed{hint}"
        raise UnsafeWebhookTarget(message)
    if not parsed.host:
        raise UnsafeWebhookTarget("callback URL names no host")
    _check_literal(parsed.host, settings)
    return parsed


def _check_literal(host: str, settings: WebhookSettings) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    _refuse_unless_allowed(check_address(host, settings))


def _refuse_unless_allowed(decision: AddressDecision, host: str = "") -> None:
    if not decision.allowed:
        via = f" ({host} resolves to it)" if host and host != decision.address else ""
        message = f"{decision.address} is a {decision.reason} address{via}"
        raise UnsafeWebhookTarget(message)


def resolve_webhook_target(url: str, settings: WebhookSettings) -> WebhookTarget:
    """Resolve a callback's host and check every address it resolves to.

    This blocks on DNS; call it from a thread in async code.

    Args:
        url: The callback URL.
        settings: The scheme and address rules.

    Returns:
        The target, with the first address to connect to.

    Raises:
        UnsafeWebhookTarget: The URL or one of its addresses is refused.
        WebhookError: The host name does not resolve.
    """
    parsed = check_webhook_url(url, settings)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = _resolve(host, port)
    for address in addresses:
        _refuse_unless_allowed(check_address(address, settings, host), host)
    return WebhookTarget(parsed, host, port, addresses[0])


def _resolve(host: str, port: int) -> list[str]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookError(f"callback host {host!r} does not resolve: {exc}") from exc
    addresses = list(dict.fromkeys(str(item[4][0]) for item in found))
    if not addresses:
        raise WebhookError(f"callback host {host!r} resolves to no address")
    return [address.split("%", 1)[0] for address in addresses]


# -- sending ---------------------------------------------------------------


@dataclass(frozen=True)
class WebhookDelivery:
    """The outcome of one delivery, after all its attempts.

    Attributes:
        request_id: The request whose answer was sent.
        delivered: True when a receiver answered 2xx.
        attempts: How many attempts were made.
        outcome: ``delivered``, ``gave_up``, ``refused`` or ``no_secret``.
        status_code: The last HTTP status received, if any.
        detail: The last error, refusal reason or answer excerpt.
    """

    request_id: str
    delivered: bool
    attempts: int
    outcome: str
    status_code: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class _Attempt:
    """What one attempt came to; ``final`` ends the delivery."""

    final: bool
    outcome: str
    status_code: int | None = None
    detail: str = ""


class WebhookSender:
    """Delivers answers to callback URLs: signed, checked, retried, counted.

    Args:
        settings: Secrets, safety rules and retry limits. Defaults to
            `WebhookSettings.from_env`.

    Attributes:
        counts: Running totals by event: ``scheduled``, ``attempts``,
            ``delivered``, ``failed_attempts``, ``gave_up``, ``refused``,
            ``no_secret`` and ``abandoned`` (cut off at shutdown).
    """

    def __init__(self, settings: WebhookSettings | None = None) -> None:
        self.settings = settings or WebhookSettings.from_env()
        self.counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._tasks: set[asyncio.Task[WebhookDelivery]] = set()

    def schedule(
        self, url: str, response: AsyncResponse
    ) -> asyncio.Task[WebhookDelivery]:
        """Start delivering in the background on the running event loop.

        Returns:
            The delivery's task; `drain` waits for it at shutdown.
        """
        task = asyncio.get_running_loop().create_task(self.deliver(url, response))
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        self.counts["scheduled"] += 1
        return task

    def _forget(self, task: asyncio.Task[WebhookDelivery]) -> None:
        """Drop a finished delivery, logging a bug that escaped it."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("webhook delivery failed", exc_info=task.exception())

    @property
    def pending(self) -> int:
        """How many scheduled deliveries have not finished."""
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for scheduled deliveries, then cancel."""
        if not self._tasks:
            return
        logger.info(
            "webhooks: waiting up to %g s for %d deliveries", timeout, len(self._tasks)
        )
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            self.counts["abandoned"] += len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
            logger.warning("webhooks: %d deliveries abandoned", len(pending))

    async def deliver(self, url: str, response: AsyncResponse) -> WebhookDelivery:
        """Deliver one answer, retrying with backoff within the limits.

        Never raises for a failed delivery: the outcome is returned, logged
        and counted.
        """
        extra = {"request_id": response.request_id, "tenant_id": response.tenant_id}
        secret = self.settings.secret_for(response.tenant_id)
        if secret is None:
            return self._no_secret(response, extra)
        body = encode(response).encode("utf-8")
        message_id = _message_id(response.request_id)
        deadline = time.monotonic() + self.settings.retry_seconds
        attempt = 0
        result = _Attempt(final=False, outcome="gave_up")
        while attempt < self.settings.max_attempts:
            attempt += 1
            result = await self._attempt(url, message_id, body, secret, attempt, extra)
            if result.final or not await self._back_off(attempt, deadline):
                break
        return self._finish(response, attempt, result, extra)

    async def _back_off(self, attempt: int, deadline: float) -> bool:
        """Sleep before the next attempt; False when no attempt is left."""
        delay = min(
            self.settings.max_backoff_seconds,
            self.settings.initial_backoff_seconds * 2 ** (attempt - 1),
        )
        if attempt >= self.settings.max_attempts or time.monotonic() + delay > deadline:
            return False
        await asyncio.sleep(delay)
        return True

    async def _attempt(
        self,
        url: str,
        message_id: str,
        body: bytes,
        secret: str,
        attempt: int,
        extra: dict[str, Any],
    ) -> _Attempt:
        extra = {**extra, "attempt": attempt}
        self.counts["attempts"] += 1
        try:
            target = await asyncio.wait_for(
                asyncio.to_thread(resolve_webhook_target, url, self.settings),
                self.settings.timeout_seconds,
            )
        except UnsafeWebhookTarget as exc:
            return _Attempt(final=True, outcome="refused", detail=exc.reason)
        except (WebhookError, asyncio.TimeoutError) as exc:
            return self._failed_attempt(_describe(exc), None, extra)
        extra["webhook_host"] = target.host
        logger.debug(
            "webhook for request %s: attempt %d to %s (%s)",
            extra["request_id"],
            attempt,
            target.host,
            target.address,
            extra=extra,
        )
        headers = _signed_headers(secret, message_id, body, target.host_header)
        try:
            status, excerpt = await asyncio.wait_for(
                self._post(target, headers, body), self.settings.timeout_seconds
            )
        except (httpx.HTTPError, asyncio.TimeoutError, OSError) as exc:
            return self._failed_attempt(_describe(exc), None, extra)
        return self._answered(status, excerpt, extra)

    async def _post(
        self, target: WebhookTarget, headers: dict[str, str], body: bytes
    ) -> tuple[int, str]:
        """POST to the checked address; returns the status and an answer excerpt."""
        async with httpx.AsyncClient(
            timeout=self.settings.timeout_seconds,
            follow_redirects=False,
            trust_env=False,
            verify=self._tls(),
        ) as client:
            request = client.build_request(
                "POST",
                target.connect_url,
                content=body,
                headers=headers,
                extensions={"sni_hostname": target.host},
            )
            response = await client.send(request, stream=True)
            try:
                excerpt = await _read_some(response, self.settings.max_response_bytes)
            finally:
                await response.aclose()
        return response.status_code, excerpt

    def _tls(self) -> ssl.SSLContext | bool:
        """The TLS context: the private CA bundle if one is set."""
        if self.settings.ca_bundle is None:
            return True
        return ssl.create_default_context(cafile=self.settings.ca_bundle)

    def _answered(self, status: int, excerpt: str, extra: dict[str, Any]) -> _Attempt:
        extra = {**extra, "status_code": status}
        if 200 <= status < 300:
            return _Attempt(True, "delivered", status, excerpt)
        if status == 410:
            # Standard Webhooks: 410 Gone means the endpoint is retired.
            return _Attempt(True, "gave_up", status, "the receiver answered 410 Gone")
        return self._failed_attempt(f"HTTP {status}", status, extra)

    def _failed_attempt(
        self, reason: str, status: int | None, extra: dict[str, Any]
    ) -> _Attempt:
        self.counts["failed_attempts"] += 1
        logger.info(
            "webhook for request %s: attempt %d failed: %s",
            extra["request_id"],
            extra["attempt"],
            reason,
            extra=extra,
        )
        return _Attempt(False, "gave_up", status, reason)

    def _finish(
        self,
        response: AsyncResponse,
        attempts: int,
        result: _Attempt,
        extra: dict[str, Any],
    ) -> WebhookDelivery:
        self.counts[result.outcome] += 1
        extra = {**extra, "attempt": attempts, "status_code": result.status_code}
        if result.outcome == "delivered":
            logger.info(
                "webhook for request %s delivered (HTTP %s, attempt %d)",
                response.request_id,
                result.status_code,
                attempts,
                extra=extra,
            )
        else:
            logger.warning(
                "webhook for request %s not delivered (%s after %d attempts): %s",
                response.request_id,
                result.outcome,
                attempts,
                result.detail,
                extra=extra,
            )
        return WebhookDelivery(
            response.request_id,
            result.outcome == "delivered",
            attempts,
            result.outcome,
            result.status_code,
            result.detail,
        )

    def _no_secret(
        self, response: AsyncResponse, extra: dict[str, Any]
    ) -> WebhookDelivery:
        self.counts["no_secret"] += 1
        logger.warning(
            "webhook for request %s not sent: tenant %s has no signing secret "
            "(set ASYNCLLM_WEBHOOK_SECRETS or ASYNCLLM_WEBHOOK_SECRET)",
            response.request_id,
            response.tenant_id,
            extra=extra,
        )
        return WebhookDelivery(response.request_id, False, 0, "no_secret")


def _signed_headers(
    secret: str, message_id: str, body: bytes, host: str
) -> dict[str, str]:
    timestamp = int(time.time())
    return {
        "Host": host,
        "Content-Type": "application/json",
        "User-Agent": f"asyncllm/{__version__}",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_webhook(secret, message_id, timestamp, body),
    }


async def _read_some(response: httpx.Response, limit: int) -> str:
    """Read at most ``limit`` raw bytes of an answer (never decompressed)."""
    taken = b""
    async for chunk in response.aiter_raw():
        taken += chunk[: limit - len(taken)]
        if len(taken) >= limit:
            break
    return taken.decode("utf-8", "replace")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
