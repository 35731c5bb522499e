"""Worker metrics in Prometheus's format, served by ``--metrics-port``.

Counters carry ``handler`` and ``tenant`` labels. Both sets are bounded: the
handler label is a registered handler name or ``unknown``, and the first
``max_tenants`` tenants seen get a label of their own while later ones share
``other``, so a flood of tenant ids cannot grow the series without limit.

The official client, ``prometheus-client``, keeps and serves them. A worker
without ``--metrics-port`` uses the base `Metrics`, which records nothing.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["Metrics", "PrometheusMetrics", "TenantLabels"]

_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_DWELL_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400)


class TenantLabels:
    """Bounded tenant labels: the first ``limit`` tenants seen keep their own.

    Later tenants share the label ``other``. Safe to call from any thread.

    Args:
        limit: Tenants with a label of their own.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str) -> str:
        """Return the label for ``tenant``."""
        with self._lock:
            if tenant not in self._seen and len(self._seen) < self._limit:
                self._seen.add(tenant)
            return tenant if tenant in self._seen else "other"


class Metrics:
    """What the worker reports; this base class records nothing."""

    def received(self, handler: str, tenant: str, dwell_seconds: float | None) -> None:
        """A request was received; ``dwell_seconds`` is its time on the queue."""

    def succeeded(self, handler: str, tenant: str, seconds: float) -> None:
        """A handler call succeeded after ``seconds``."""

    def failed(self, handler: str, tenant: str, seconds: float) -> None:
        """A handler call failed (retried or not) after ``seconds``."""

    def retried(self, handler: str, tenant: str) -> None:
        """A failed request will be tried again."""

    def dead_lettered(self, handler: str, tenant: str) -> None:
        """A request went to the dead-letter queue."""

    def heartbeat(self) -> None:
        """A running message's visibility was extended."""

    def in_flight(self, count: int) -> None:
        """The number of messages held by the worker changed."""

    def webhook(self, outcome: str) -> None:
        """A webhook delivery attempt ended with ``outcome``."""


class PrometheusMetrics(Metrics):
    """Metrics in a private registry, served over HTTP.

    Args:
        handlers: The registered handler names.
        max_tenants: Tenants with a label of their own. Defaults to 100.
    """

    def __init__(self, handlers: list[str], max_tenants: int = 100) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self._handlers = set(handlers)
        self._tenant_label = TenantLabels(max_tenants)
        self._servers: list[tuple[Any, threading.Thread]] = []
        labels = ["handler", "tenant"]

        def counter(name: str, text: str, names: list[str] | None = None) -> Any:
            return Counter(name, text, names or labels, registry=self.registry)

        self._received = counter(
            "asyncllm_requests_received_total", "Requests received"
        )
        self._succeeded = counter(
            "asyncllm_requests_succeeded_total", "Requests answered"
        )
        self._failed = counter("asyncllm_requests_failed_total", "Failed handler calls")
        self._retried = counter("asyncllm_requests_retried_total", "Attempts to come")
        self._dead = counter("asyncllm_requests_dead_lettered_total", "Dead-lettered")
        self._beats = Counter(
            "asyncllm_heartbeat_extensions_total",
            "Visibility extensions of running messages",
            registry=self.registry,
        )
        self._hooks = counter(
            "asyncllm_webhook_deliveries_total", "Webhook attempts", ["outcome"]
        )
        self._in_flight = Gauge(
            "asyncllm_in_flight", "Messages held by the worker", registry=self.registry
        )
        self._duration = Histogram(
            "asyncllm_handler_duration_seconds",
            "Handler call duration",
            ["handler"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._dwell = Histogram(
            "asyncllm_queue_dwell_seconds",
            "Time from sending a request to receiving it",
            ["handler"],
            buckets=_DWELL_BUCKETS,
            registry=self.registry,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` in a thread; returns the port."""
        from prometheus_client import start_http_server

        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._servers.append((server, thread))
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop serving ``/metrics`` and release the port."""
        while self._servers:
            server, thread = self._servers.pop()
            server.shutdown()
            server.server_close()
            thread.join(5)

    def _labels(self, handler: str, tenant: str) -> tuple[str, str]:
        handler_label = handler if handler in self._handlers else "unknown"
        return handler_label, self._tenant_label(tenant)

    def received(self, handler: str, tenant: str, dwell_seconds: float | None) -> None:
        """Count a received request and its time on the queue."""
        labels = self._labels(handler, tenant)
        self._received.labels(*labels).inc()
        if dwell_seconds is not None:
            self._dwell.labels(labels[0]).observe(max(0.0, dwell_seconds))

    def succeeded(self, handler: str, tenant: str, seconds: float) -> None:
        """Count a success and its duration."""
        labels = self._labels(handler, tenant)
        self._succeeded.labels(*labels).inc()
        self._duration.labels(labels[0]).observe(seconds)

    def failed(self, handler: str, tenant: str, seconds: float) -> None:
        """Count a failed call and its duration."""
        labels = self._labels(handler, tenant)
        self._failed.labels(*labels).inc()
        self._duration.labels(labels[0]).observe(seconds)

    def retried(self, handler: str, tenant: str) -> None:
        """Count an attempt to come."""
        self._retried.labels(*self._labels(handler, tenant)).inc()

    def dead_lettered(self, handler: str, tenant: str) -> None:
        """Count a dead-lettered request."""
        self._dead.labels(*self._labels(handler, tenant)).inc()

    def heartbeat(self) -> None:
        """Count a visibility extension."""
        self._beats.inc()

    def in_flight(self, count: int) -> None:
        """Set the in-flight gauge."""
        self._in_flight.set(count)

    def webhook(self, outcome: str) -> None:
        """Count a webhook attempt by outcome."""
        self._hooks.labels(outcome).inc()
