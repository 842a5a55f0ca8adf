"""The operator's own Prometheus metrics, served on --metrics-address (classic text format).

A private registry (never prometheus_client's global one, which would mix in whatever else the
process registers) filled by the autoscaler's ticks. Per-service series carry only
`namespace` and `name`, both Kubernetes names, so their number is bounded by the services;
they are removed when a service is deleted or stops autoscaling, so a gone service raises no
stale alert.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("tokenscale.observability")
SERVICE_LABELS = ("namespace", "name")
# The classic text format, which every Prometheus reads (generate_latest writes it).
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT (an empty host listens on all interfaces) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics-address wants HOST:PORT, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class OperatorMetrics:
    """The metrics of one operator process, and (once `serve` is called) their HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)

        def gauge(name: str, help: str) -> Gauge:
            return Gauge(f"tokenscale_{name}", help, SERVICE_LABELS, registry=registry)

        self.desired_replicas = gauge("desired_replicas", "Replicas the autoscaler set (DryRun: the current count).")
        self.recommended_replicas = gauge("recommended_replicas", "Replicas the policy recommends.")
        self.ready_replicas = gauge("ready_replicas", "Ready replicas of the serving Deployment.")
        self.metrics_available = gauge("metrics_available", "1 when the service's signals were read, else 0.")
        self.scaling_limited = gauge("scaling_limited", "1 when the wanted replica count cannot be reached.")
        self.tokens_per_second = gauge("tokens_per_second", "Generated tokens/s (short window) as last read.")
        self.queue_depth = gauge("queue_depth", "Requests waiting, summed over the pods, as last read.")
        self.scale_events = Counter("tokenscale_scale_events", "Scalings of the serving Deployment.",
                                    (*SERVICE_LABELS, "direction"), registry=registry)
        self.decisions = Counter("tokenscale_decisions", "Decisions taken, by the rule that limited them.",
                                 (*SERVICE_LABELS, "limited_by"), registry=registry)
        self.tick_duration = Histogram(
            "tokenscale_tick_duration_seconds", "Seconds one tick of the whole fleet takes: read, decide, plan, act.",
            registry=registry, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60))
        self.tick_api_requests = Gauge("tokenscale_tick_api_requests", "Kubernetes API requests the last tick made, "
                                       "by verb.", ("verb",), registry=registry)
        self.api_requests = Counter("tokenscale_autoscaler_api_requests",
                                    "Kubernetes API requests made by ticks, by verb.", ("verb",), registry=registry)
        self.tick_status_writes = Gauge("tokenscale_tick_status_writes", "Status writes of the last tick.",
                                        registry=registry)
        self.status_writes = Counter("tokenscale_status_writes", "Status writes made by ticks.", registry=registry)
        self.oldest_decision_age = Gauge(
            "tokenscale_oldest_decision_age_seconds", "Age of the oldest service's last decision, at the last tick.",
            registry=registry)
        self.behind_schedule = Gauge(
            "tokenscale_services_behind_schedule", "Services whose last decision is more than two ticks old "
            "(or whose writes are still in flight).", registry=registry)
        self.tick_errors = Counter("tokenscale_tick_errors", "Services whose tick failed (reported on each).",
                                   registry=registry)
        self.tick_seconds_setting = Gauge("tokenscale_tick_interval_seconds", "The configured tick.",
                                          registry=registry)
        self.metrics_server_errors = Counter("tokenscale_metrics_server_errors",
                                             "Attempts to bind --metrics-address that failed.", registry=registry)
        self.prometheus_queries = Counter("tokenscale_prometheus_queries", "PromQL queries sent.",
                                          registry=registry)
        self.prometheus_errors = Counter("tokenscale_prometheus_errors", "Signal reads that failed.",
                                         registry=registry)
        self.services = Gauge("tokenscale_services", "InferenceServices the autoscaler decides for.",
                              registry=registry)
        self._gauges = (self.desired_replicas, self.recommended_replicas, self.ready_replicas,
                        self.metrics_available, self.scaling_limited, self.tokens_per_second, self.queue_depth)
        self._counters = (self.scale_events, self.decisions)
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], set[tuple[str, ...]]] = {}  # service -> its counters' label sets
        self._server: ThreadingHTTPServer | None = None

    # --- recording ------------------------------------------------------------------------------

    def record(self, namespace: str, name: str, *, desired: int, recommended: int, ready: int,
               metrics_available: bool, scaling_limited: bool, tokens_per_second: float | None,
               queue_depth: float | None, limited_by: str | None, scaled: str | None) -> None:
        """One tick's outcome for a service; `scaled` is "up", "down" or None."""
        labels = (namespace, name)
        with self._lock:
            self.desired_replicas.labels(*labels).set(desired)
            self.recommended_replicas.labels(*labels).set(recommended)
            self.ready_replicas.labels(*labels).set(ready)
            self.metrics_available.labels(*labels).set(1 if metrics_available else 0)
            self.scaling_limited.labels(*labels).set(1 if scaling_limited else 0)
            for metric, value in ((self.tokens_per_second, tokens_per_second), (self.queue_depth, queue_depth)):
                if value is not None and math.isfinite(value):
                    metric.labels(*labels).set(value)
                else:  # unknown is no sample, never a zero
                    _remove(metric, labels)
            counted = self._known.setdefault(labels, set())
            rule = limited_by or "none"
            self.decisions.labels(*labels, rule).inc()
            counted.add(("decisions", rule))
            if scaled is not None:
                self.scale_events.labels(*labels, scaled).inc()
                counted.add(("scale_events", scaled))
            self.services.set(len(self._known))

    def forget(self, namespace: str, name: str) -> None:
        """Remove every series of a service (deleted, or no longer autoscaled)."""
        labels = (namespace, name)
        with self._lock:
            for metric in self._gauges:
                _remove(metric, labels)
            for kind, value in self._known.pop(labels, set()):
                _remove(self.decisions if kind == "decisions" else self.scale_events, (*labels, value))
            self.services.set(len(self._known))

    def scaled(self, namespace: str, name: str, direction: str) -> None:
        with self._lock:
            self.scale_events.labels(namespace, name, direction).inc()
            self._known.setdefault((namespace, name), set()).add(("scale_events", direction))

    def tick_error(self) -> None:
        self.tick_errors.inc()

    def tick_done(self, *, seconds: float, requests: dict[str, int], writes: int, oldest_decision_age: float,
                  behind: int, services: int) -> None:
        self.tick_duration.observe(seconds)
        for verb in ("get", "list", "patch", "create", "update", "delete"):
            self.tick_api_requests.labels(verb).set(requests.get(verb, 0))
            if requests.get(verb):
                self.api_requests.labels(verb).inc(requests[verb])
        self.tick_status_writes.set(writes)
        if writes:
            self.status_writes.inc(writes)
        self.oldest_decision_age.set(oldest_decision_age)
        self.behind_schedule.set(behind)
        self.services.set(services)

    def read_failed(self) -> None:
        self.prometheus_errors.inc()

    def queries_sent(self, count: int) -> None:
        if count > 0:
            self.prometheus_queries.inc(count)

    # --- serving --------------------------------------------------------------------------------

    def listen(self, address: str) -> tuple[str, int]:
        """Serve /metrics on HOST:PORT in a daemon thread; returns the bound address (port 0 picks one)."""
        handler = type("Handler", (_MetricsHandler,), {"registry": self.registry})
        host, port = parse_address(address)
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics",
                         daemon=True).start()  # a short poll: close() returns quickly
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def serve_or_retry(self, address: str, retry_seconds: float = 60.0) -> tuple[str, int] | None:
        """`listen`, but an address that cannot be bound (e.g. taken) stops nothing: one error is
        logged, the failure is counted, and binding is retried in the background."""
        try:
            return self.listen(address)
        except OSError as error:
            self.metrics_server_errors.inc()
            log.error("cannot serve the operator's metrics on %s: %s; autoscaling goes on without them, and the "
                      "address is tried again every %g s", address, error, retry_seconds)
        self._retrying = threading.Event()

        def retry() -> None:
            while not self._retrying.wait(retry_seconds):
                try:
                    host, port = self.listen(address)
                except OSError:
                    self.metrics_server_errors.inc()
                    continue
                log.info("serving the operator's metrics on http://%s:%d/metrics", host, port)
                return

        threading.Thread(target=retry, name="metrics-retry", daemon=True).start()
        return None

    def close(self) -> None:
        if getattr(self, "_retrying", None) is not None:
            self._retrying.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _remove(metric: Any, labels: tuple[str, ...]) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _MetricsHandler(BaseHTTPRequestHandler):
    """GET /metrics: the classic text format, whatever the Accept header (no OpenMetrics)."""

    registry: CollectorRegistry

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = generate_latest(self.registry)
        self.send_response(200)
        self.send_header("Content-Type", TEXT_FORMAT)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        """No access log: Prometheus scrapes every few seconds."""
