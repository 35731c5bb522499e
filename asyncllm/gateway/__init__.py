"""The HTTP gateway: submit chat requests over HTTP, poll or get a webhook.

Install it with ``pip install 'asyncllm[gateway]'`` and run it with
``asyncllm gateway -A module:app --keys keys.json``, or serve the app that
`create_gateway` returns with any ASGI server. Routes:

- ``POST /v1/async/chat``: queue an OpenAI chat-completions request (with an
  optional ``provider`` and ``callback``); 202 with the request id.
- ``GET /v1/async/{id}``: 200 with the AsyncResponse once answered, 202 while
  queued, 404 for unknown ids and other tenants' ids, 410 once expired.
- ``GET /healthz`` and ``GET /readyz``; the OpenAPI document at
  ``/openapi.json``.

A production deployment still needs TLS termination and rate limits in front
of it; see the docs.
"""

from ._app import DEFAULT_MAX_BODY_BYTES, GatewayError, create_gateway
from ._keys import ApiKey, ApiKeys, hash_key

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "ApiKey",
    "ApiKeys",
    "GatewayError",
    "create_gateway",
    "hash_key",
]
