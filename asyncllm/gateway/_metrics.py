"""The gateway's own metrics, in Prometheus's format on ``GET /metrics``.

Calls are counted by route template (``/v1/async/{request_id}``, never the
id itself), method and status, and timed by route; submissions are counted
by tenant. Every label set is bounded: a path no route matches counts as
``other``, so does a method outside the usual seven, and tenants past
``max_tenants`` share the label ``other``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .._metrics import TenantLabels

__all__ = ["GatewayMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[Request], Awaitable[Response]]


class GatewayMetrics:
    """Counters and a latency histogram for one gateway, in a private registry.

    Args:
        max_tenants: Tenants with a label of their own. Defaults to 100.
    """

    def __init__(self, max_tenants: int = 100) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self._tenant_label = TenantLabels(max_tenants)
        self._calls = Counter(
            "asyncllm_gateway_http_requests_total",
            "HTTP calls answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "asyncllm_gateway_http_request_duration_seconds",
            "Time to answer an HTTP call, by route template",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._submitted = Counter(
            "asyncllm_gateway_requests_submitted_total",
            "Chat requests queued, by tenant",
            ["tenant"],
            registry=self.registry,
        )

    async def middleware(self, request: Request, call_next: Handler) -> Response:
        """Time and count one HTTP call (an ``http`` middleware for FastAPI)."""
        began = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = _route_of(request)
            self._latency.labels(route).observe(time.perf_counter() - began)
            method = request.method if request.method in _METHODS else "other"
            self._calls.labels(route, method, str(status)).inc()

    def submitted(self, tenant: str) -> None:
        """Count a chat request queued for ``tenant``."""
        self._submitted.labels(self._tenant_label(tenant)).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The metrics as Prometheus text, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _route_of(request: Request) -> str:
    """The matched route's path template, or ``other``."""
    route: Any = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"
