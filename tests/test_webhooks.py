"""Webhooks: Standard Webhooks signatures, the address guard, retried deliveries.

Every delivery here goes to a receiver on 127.0.0.1 that the test started and
allow-listed. Private and metadata addresses are only ever handed to the
guard's decision functions: no test sends traffic to them.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from asyncllm import (
    AsyncRequest,
    AsyncResponse,
    ChatResponse,
    ConfigurationError,
    TerminalError,
    UnsafeWebhookTarget,
    WebhookSender,
    WebhookSettings,
    WebhookVerificationError,
    encode,
    sign_webhook,
    verify_webhook,
)
from asyncllm._webhooks import (
    check_address,
    check_webhook_url,
    resolve_webhook_target,
)

from .conftest import CHAT, running_worker
from .receivers import receiver
from .support import depth, wait_for

SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtdGVzdHMtb25seQ=="
#: Deliveries to the test's own receiver: http on loopback, allowed explicitly.
LOCAL = WebhookSettings(
    default_secret=SECRET,
    allow_http=True,
    allow=("127.0.0.1/32",),
    initial_backoff_seconds=0.05,
    timeout_seconds=5,
)


def answer(request_id: str = "req-1", tenant_id: str = "acme") -> AsyncResponse:
    completion = ChatResponse.from_text("Indigo.", model="echo")
    return AsyncResponse(
        request_id=request_id, tenant_id=tenant_id, response=completion
    )


def deliver(settings: WebhookSettings, url: str, response: AsyncResponse) -> Any:
    sender = WebhookSender(settings)
    return sender, asyncio.run(sender.deliver(url, response))


# -- signatures ------------------------------------------------------------


def test_a_signature_matches_the_standard_webhooks_example() -> None:
    # The example of the Standard Webhooks specification.
    signature = sign_webhook(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        '{"test": 2432232314}',
    )

    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("secret", [SECRET, "a raw secret, used as UTF-8"])
def test_a_signed_body_verifies_with_its_secret(secret: str) -> None:
    now = int(time.time())
    body = b'{"request_id": "r"}'
    headers = {
        "Webhook-Id": "r",
        "Webhook-Timestamp": str(now),
        "Webhook-Signature": sign_webhook(secret, "r", now, body),
    }

    verify_webhook(secret, headers, body)


def signed(body: bytes, timestamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": "msg-1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign_webhook(SECRET, "msg-1", stamp, body),
    }


def test_one_matching_signature_among_several_is_enough() -> None:
    headers = signed(b"{}")
    headers["webhook-signature"] = "v1,bm9wZQ== " + headers["webhook-signature"]

    verify_webhook(SECRET, headers, b"{}")


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"body": b'{"x": 2}'}, "no webhook-signature matches"),
        ({"secret": "whsec_b3RoZXI="}, "no webhook-signature matches"),
        ({"skew": -301}, "old"),
        ({"skew": 301}, "future"),
        ({"drop": "webhook-signature"}, "webhook-signature header is missing"),
        ({"drop": "webhook-id"}, "webhook-id header is missing"),
    ],
)
def test_a_tampered_or_stale_delivery_is_refused(
    change: dict[str, Any], complaint: str
) -> None:
    headers = signed(b'{"x": 1}', int(time.time()) + change.get("skew", 0))
    headers.pop(change.get("drop", ""), None)

    with pytest.raises(WebhookVerificationError, match=complaint):
        verify_webhook(
            change.get("secret", SECRET), headers, change.get("body", b'{"x": 1}')
        )


def test_a_secret_that_is_not_base64_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not base64"):
        WebhookSettings(default_secret="whsec_***")


# -- the guard -------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.7", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),
        ("::ffff:10.0.0.7", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("2002:a00:7::", "private"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
    ],
)
def test_the_guard_refuses_non_public_addresses(address: str, kind: str) -> None:
    decision = check_address(address, WebhookSettings())

    assert not decision.allowed
    assert decision.reason == kind


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111"])
def test_the_guard_allows_public_addresses(address: str) -> None:
    assert check_address(address, WebhookSettings()).allowed


def test_an_allow_listed_network_lets_its_addresses_through() -> None:
    settings = WebhookSettings(allow=("10.1.0.0/16", "127.0.0.1"))

    assert check_address("10.1.2.3", settings).allowed
    assert check_address("127.0.0.1", settings).allowed
    assert not check_address("10.2.0.1", settings).allowed


def test_an_allow_listed_host_never_unlocks_a_metadata_address() -> None:
    settings = WebhookSettings(allow=("hooks.internal",))

    assert check_address("10.9.9.9", settings, host="hooks.internal").allowed
    refused = check_address("169.254.169.254", settings, host="hooks.internal")
    assert (refused.allowed, refused.reason) == (False, "metadata")
    explicit = WebhookSettings(allow=("169.254.169.254/32",))
    assert check_address("169.254.169.254", explicit).allowed


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/x", "scheme 'http' is not allowed"),
        ("ftp://hooks.example.com/x", "scheme 'ftp' is not allowed"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://10.0.0.7:8443/hook", "private"),
        ("https:///hook", "names no host"),
    ],
)
def test_a_callback_url_is_refused_before_any_lookup(url: str, reason: str) -> None:
    with pytest.raises(UnsafeWebhookTarget, match=reason):
        check_webhook_url(url, WebhookSettings())


def test_a_host_name_is_judged_by_the_addresses_it_resolves_to() -> None:
    # localhost resolves from /etc/hosts: no DNS query leaves the machine.
    with pytest.raises(UnsafeWebhookTarget, match=r"loopback.*localhost resolves"):
        resolve_webhook_target("https://localhost/hook", WebhookSettings())

    allowed = WebhookSettings(allow=("localhost",))
    target = resolve_webhook_target("https://localhost:8443/hook", allowed)
    assert (target.host, target.port, target.host_header) == (
        "localhost",
        8443,
        "localhost:8443",
    )
    assert target.connect_url.host == target.address


# -- deliveries --------------------------------------------------------------


def test_a_receiver_gets_one_signed_delivery_that_verifies() -> None:
    response = answer()

    with receiver() as hook:
        sender, outcome = deliver(LOCAL, hook.url, response)
        (got,) = hook.wait_for(1)

    verify_webhook(SECRET, got.headers, got.body)
    assert got.body == encode(response).encode()
    assert got.headers["webhook-id"] == "req-1"
    assert got.headers["content-type"] == "application/json"
    assert (outcome.delivered, outcome.attempts, outcome.status_code) == (
        True,
        1,
        200,
    )
    assert sender.counts["delivered"] == 1
    assert sender.counts["attempts"] == 1


def test_https_goes_to_the_checked_address_and_verifies_the_host_name(
    tmp_path: Path,
) -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_tls)
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    settings = LOCAL.replace(
        allow_http=False, allow=("localhost",), ca_bundle=str(tmp_path / "ca.pem")
    )

    with receiver(tls=server_tls) as hook:
        _, outcome = deliver(settings, hook.url, answer())
        (got,) = hook.wait_for(1)

    assert outcome.delivered
    assert got.headers["host"] == f"localhost:{hook.port}"
    verify_webhook(SECRET, got.headers, got.body)


def test_a_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("hooks.example.com").configure_cert(server_tls)
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    settings = LOCAL.replace(
        allow=("localhost",), ca_bundle=str(tmp_path / "ca.pem"), max_attempts=1
    )

    with receiver(tls=server_tls) as hook:
        _, outcome = deliver(settings, hook.url, answer())

    assert not outcome.delivered
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.detail
    assert hook.received == []


def test_a_receiver_that_fails_twice_gets_it_on_the_third_try() -> None:
    with receiver(script=[500, 503]) as hook:
        sender, outcome = deliver(LOCAL, hook.url, answer())
        got = hook.wait_for(3)

    assert [outcome.delivered, outcome.attempts] == [True, 3]
    assert len(got) == 3
    assert {item.headers["webhook-id"] for item in got} == {"req-1"}
    for item in got:
        verify_webhook(SECRET, item.headers, item.body)
    assert sender.counts["failed_attempts"] == 2
    assert sender.counts["delivered"] == 1


def test_http_is_refused_by_default_and_nothing_is_sent() -> None:
    settings = LOCAL.replace(allow_http=False)

    with receiver() as hook:
        sender, outcome = deliver(settings, hook.url, answer())

    assert outcome.outcome == "refused"
    assert "scheme 'http' is not allowed" in outcome.detail
    assert hook.received == []
    assert sender.counts["refused"] == 1


def test_loopback_is_refused_unless_allow_listed() -> None:
    settings = LOCAL.replace(allow=())

    with receiver() as hook:
        _, outcome = deliver(settings, hook.url, answer())

    assert (outcome.outcome, outcome.detail) == (
        "refused",
        "127.0.0.1 is a loopback address",
    )
    assert hook.received == []


def test_redirects_are_not_followed() -> None:
    settings = LOCAL.replace(max_attempts=2)

    with receiver(script=[307, 307], location="/elsewhere") as hook:
        _, outcome = deliver(settings, hook.url, answer())
        got = hook.wait_for(2)

    assert not outcome.delivered
    assert outcome.status_code == 307
    assert [item.path for item in got] == ["/hook", "/hook"]


def test_410_gone_stops_the_retries() -> None:
    with receiver(script=[410]) as hook:
        _, outcome = deliver(LOCAL, hook.url, answer())

    assert (outcome.outcome, outcome.attempts) == ("gave_up", 1)
    assert len(hook.received) == 1


def test_retries_stop_within_the_retry_window() -> None:
    settings = LOCAL.replace(
        retry_seconds=0.5, initial_backoff_seconds=0.1, max_attempts=50
    )
    began = time.monotonic()

    with receiver(script=[500] * 50) as hook:
        sender, outcome = deliver(settings, hook.url, answer())

    assert outcome.outcome == "gave_up"
    assert 2 <= outcome.attempts <= 4
    assert time.monotonic() - began < 5
    assert sender.counts["gave_up"] == 1


def test_only_the_start_of_a_long_answer_is_read() -> None:
    settings = LOCAL.replace(max_response_bytes=100)

    with receiver(answer_body=b"x" * 2_000_000) as hook:
        _, outcome = deliver(settings, hook.url, answer())

    assert outcome.delivered
    assert outcome.detail == "x" * 100


def test_a_tenant_without_a_secret_gets_no_unsigned_webhook() -> None:
    settings = LOCAL.replace(default_secret=None, secrets={"globex": SECRET})

    with receiver() as hook:
        sender, outcome = deliver(settings, hook.url, answer(tenant_id="acme"))

    assert outcome.outcome == "no_secret"
    assert hook.received == []
    assert sender.counts["no_secret"] == 1


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"acme": "acme-secret"}), encoding="utf-8")
    env = {
        "ASYNCLLM_WEBHOOK_SECRETS": str(secrets),
        "ASYNCLLM_WEBHOOK_SECRET": "shared-secret",
        "ASYNCLLM_WEBHOOK_ALLOW": "127.0.0.1/32, hooks.internal",
        "ASYNCLLM_WEBHOOK_ALLOW_HTTP": "true",
        "ASYNCLLM_WEBHOOK_RETRY_SECONDS": "30",
    }

    settings = WebhookSettings.from_env(env)

    assert settings.secret_for("acme") == "acme-secret"
    assert settings.secret_for("globex") == "shared-secret"
    assert settings.allow == ("127.0.0.1/32", "hooks.internal")
    assert settings.allow_http
    assert settings.retry_seconds == 30.0


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"ASYNCLLM_WEBHOOK_SECRETS": "/nonexistent/s.json"}, "cannot read"),
        ({"ASYNCLLM_WEBHOOK_ALLOW": "not a host!"}, "neither a CIDR nor a host"),
        ({"ASYNCLLM_WEBHOOK_MAX_ATTEMPTS": "many"}, "is not a number"),
    ],
)
def test_bad_webhook_settings_are_configuration_errors(
    env: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        WebhookSettings.from_env(env)


# -- the worker sends them ---------------------------------------------------


def test_the_worker_delivers_a_signed_webhook_for_a_completed_request(
    make_app: Any,
) -> None:
    app = make_app()
    app.handler(lambda request: ChatResponse.from_text("Teal.", model="echo"))

    with receiver() as hook, running_worker(app, webhooks=WebhookSender(LOCAL)):
        handle = app.submit(CHAT, tenant_id="acme", callback=hook.url)
        (got,) = hook.wait_for(1)

    verify_webhook(SECRET, got.headers, got.body)
    sent = json.loads(got.body)
    assert sent["request_id"] == handle.id
    assert sent["tenant_id"] == "acme"
    assert sent["response"]["choices"][0]["message"]["content"] == "Teal."
    assert sent["error"] is None


def test_the_worker_delivers_the_error_of_a_failed_request(make_app: Any) -> None:
    app = make_app()

    @app.handler
    def refuse(request: AsyncRequest) -> ChatResponse:
        raise TerminalError("context too long", code="context_length_exceeded")

    with receiver() as hook, running_worker(app, webhooks=WebhookSender(LOCAL)):
        app.submit(CHAT, tenant_id="acme", callback=hook.url)
        (got,) = hook.wait_for(1)

    verify_webhook(SECRET, got.headers, got.body)
    sent = json.loads(got.body)
    assert sent["response"] is None
    assert sent["error"]["code"] == "context_length_exceeded"


def test_a_slow_receiver_never_holds_up_the_queue_and_gets_the_grace_period(
    make_app: Any, sqs_client: Any
) -> None:
    app = make_app()
    app.handler(lambda request: ChatResponse.from_text("Slate.", model="echo"))
    sender = WebhookSender(LOCAL)
    request_url = app.broker.queue_url(app.settings.request_queue)

    with receiver(delay_seconds=2) as hook:
        with running_worker(app, webhooks=sender, grace_seconds=10):
            handle = app.submit(CHAT, tenant_id="acme", callback=hook.url)
            handle.get(timeout=20)
            hook.wait_for(1)
            wait_for(lambda: depth(sqs_client, request_url) == 0, timeout=2)
            answered_before_stop = hook.answered
        answered_after_stop = hook.answered

    assert answered_before_stop == 0
    assert answered_after_stop == 1
    assert sender.counts["delivered"] == 1


def test_a_delivery_runs_in_the_background_of_its_event_loop() -> None:
    sender = WebhookSender(LOCAL)
    seen: list[int] = []

    async def scenario(url: str) -> None:
        task = sender.schedule(url, answer())
        seen.append(sender.pending)
        await sender.drain(10)
        assert task.result().delivered

    with receiver() as hook:
        thread = threading.Thread(target=asyncio.run, args=(scenario(hook.url),))
        thread.start()
        thread.join(20)

    assert seen == [1]
    assert sender.pending == 0
    assert sender.counts["scheduled"] == 1
