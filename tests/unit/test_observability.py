"""The operator's own metrics: values and series removal, read back through a real HTTP scrape."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tokenscale.autoscaler import Autoscaler
from tokenscale.metrics.source import PrometheusConfig, PrometheusSource, ServiceRef
from tokenscale.observability import OperatorMetrics, parse_address
from tokenscale.settings import Settings


@pytest.fixture
def served():
    metrics = OperatorMetrics()
    host, port = metrics.listen("127.0.0.1:0")
    yield metrics, f"http://{host}:{port}/metrics"
    metrics.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, keyed by (name, sorted labels); asks for OpenMetrics to prove
    the endpoint answers in the classic text format anyway."""
    request = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    assert "# EOF" not in text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def service(namespace: str, name: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": namespace, "name": name, **more}.items()))


def record(metrics: OperatorMetrics, name: str, **changes):
    values = dict(desired=3, recommended=3, ready=2, metrics_available=True, scaling_limited=False,
                  tokens_per_second=280.5, queue_depth=4.0, limited_by=None, scaled="up")
    values.update(changes)
    metrics.record("ml", name, **values)


def test_a_tick_shows_up_in_a_scrape(served):
    metrics, url = served
    record(metrics, "llama")
    record(metrics, "llama", desired=4, recommended=4, ready=3, scaled="up", limited_by="maxReplicas",
           scaling_limited=True)
    record(metrics, "mistral", metrics_available=False, tokens_per_second=None, queue_depth=float("nan"),
           scaled=None, limited_by="hold:metricsUnavailable")
    samples = scrape(url)
    llama, mistral = service("ml", "llama"), service("ml", "mistral")
    assert samples["tokenscale_desired_replicas", llama] == 4
    assert samples["tokenscale_recommended_replicas", llama] == 4
    assert samples["tokenscale_ready_replicas", llama] == 3
    assert samples["tokenscale_metrics_available", llama] == 1
    assert samples["tokenscale_scaling_limited", llama] == 1
    assert samples["tokenscale_tokens_per_second", llama] == 280.5
    assert samples["tokenscale_queue_depth", llama] == 4
    assert samples["tokenscale_scale_events_total", service("ml", "llama", direction="up")] == 2
    assert samples["tokenscale_decisions_total", service("ml", "llama", limited_by="none")] == 1
    assert samples["tokenscale_decisions_total", service("ml", "llama", limited_by="maxReplicas")] == 1
    assert samples["tokenscale_metrics_available", mistral] == 0
    # An unknown signal is no sample, never a zero.
    assert ("tokenscale_tokens_per_second", mistral) not in samples
    assert ("tokenscale_queue_depth", mistral) not in samples
    assert samples["tokenscale_services", ()] == 2


def test_a_forgotten_service_leaves_no_series(served):
    metrics, url = served
    record(metrics, "llama")
    record(metrics, "gone", scaled="down", limited_by="scaleDownRate")
    metrics.forget("ml", "gone")
    metrics.forget("ml", "never-seen")  # harmless
    samples = scrape(url)
    assert not [key for key in samples if ("name", "gone") in key[1]]
    assert samples["tokenscale_desired_replicas", service("ml", "llama")] == 3
    assert samples["tokenscale_services", ()] == 1


def test_failed_prometheus_reads_are_counted(served):
    metrics, url = served
    with socket.socket() as closed:  # a port nothing listens on: a real connection failure
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    source = PrometheusSource(PrometheusConfig(url=f"http://127.0.0.1:{port}", timeout_seconds=2.0))
    try:
        scaler = Autoscaler(None, Settings(), source=source, metrics=metrics)
        _, why = scaler.read_signals([ServiceRef("ml", "llama")], now=0.0)
    finally:
        source.close()
    assert why
    samples = scrape(url)
    assert samples["tokenscale_prometheus_errors_total", ()] == 1
    assert samples["tokenscale_prometheus_queries_total", ()] == source.queries_sent > 0


def test_tick_durations_are_a_histogram(served):
    metrics, url = served
    metrics.tick_duration.observe(0.3)
    samples = scrape(url)
    assert samples["tokenscale_tick_duration_seconds_count", ()] == 1
    assert samples["tokenscale_tick_duration_seconds_bucket", (("le", "0.5"),)] == 1
    assert samples["tokenscale_tick_duration_seconds_bucket", (("le", "0.25"),)] == 0


@pytest.mark.parametrize("address, parsed", [("0.0.0.0:8081", ("0.0.0.0", 8081)), (":9000", ("0.0.0.0", 9000)),
                                              ("[::1]:8081", ("::1", 8081))])
def test_addresses_parse(address, parsed):
    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["8081", "host:port", "host:70000"])
def test_bad_addresses_are_refused(address):
    with pytest.raises(ValueError, match="--metrics-address"):
        parse_address(address)


def test_an_ipv6_address_is_served():
    metrics = OperatorMetrics()
    try:
        host, port = metrics.listen("[::1]:0")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        record(metrics, "llama")
        assert scrape(f"http://[{host}]:{port}/metrics")["tokenscale_desired_replicas", service("ml", "llama")] == 3
    finally:
        metrics.close()


def test_a_prometheus_outage_is_logged_when_it_starts_and_when_it_ends(caplog):
    """Not one urllib3 "Retrying" line per query per tick: the next tick is the retry."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    source = PrometheusSource(PrometheusConfig(url=f"http://127.0.0.1:{port}", timeout_seconds=2.0))
    scaler = Autoscaler(None, Settings(), source=source)
    caplog.set_level("DEBUG")
    try:
        for tick in range(3):
            assert scaler.read_signals([ServiceRef("ml", "llama")], now=float(tick))[1]
    finally:
        source.close()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "Prometheus unavailable" in warnings[0].getMessage()
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]
    scaler.source = _Answering()
    scaler.read_signals([ServiceRef("ml", "llama")], now=4.0)
    assert "Prometheus is back" in [r for r in caplog.records if r.levelname == "WARNING"][-1].getMessage()


class _Answering:
    queries_sent = 0

    def read(self, refs, at):
        return {}

    def close(self):
        pass


def test_a_metrics_address_in_use_is_one_error_not_a_stop(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        metrics = OperatorMetrics()
        try:
            assert metrics.serve_or_retry(address, retry_seconds=3600) is None
        finally:
            metrics.close()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and address in errors[0].getMessage() and "autoscaling goes on" in errors[0].getMessage()
    assert metrics.metrics_server_errors._value.get() == 1


def test_tick_metrics_report_requests_writes_and_lag(served):
    metrics, url = served
    metrics.tick_done(seconds=0.4, requests={"patch": 12, "create": 3}, writes=10, oldest_decision_age=31.0,
                      behind=2, services=100)
    samples = scrape(url)
    assert samples["tokenscale_tick_api_requests", (("verb", "patch"),)] == 12
    assert samples["tokenscale_tick_api_requests", (("verb", "get"),)] == 0
    assert samples["tokenscale_autoscaler_api_requests_total", (("verb", "create"),)] == 3
    assert samples["tokenscale_tick_status_writes", ()] == 10
    assert samples["tokenscale_oldest_decision_age_seconds", ()] == 31.0
    assert samples["tokenscale_services_behind_schedule", ()] == 2
