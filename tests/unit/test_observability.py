"""The operator's own metrics: values and series removal, read back through a real HTTP scrape."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tokenscale.autoscaler import SignalSnapshots
from tokenscale.metrics.source import PrometheusConfig, PrometheusSource, ServiceRef
from tokenscale.observability import OperatorMetrics, parse_address


@pytest.fixture
def served():
    metrics = OperatorMetrics()
    host, port = metrics.serve("127.0.0.1:0")
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
        snapshots = SignalSnapshots(source, 15.0, metrics=metrics)
        _, why = snapshots.get(ServiceRef("ml", "llama"))
    finally:
        source.close()
    assert why
    samples = scrape(url)
    assert samples["tokenscale_prometheus_errors_total", ()] == 1
    assert samples["tokenscale_prometheus_queries_total", ()] == source.queries_sent > 0


def test_tick_durations_are_a_histogram(served):
    metrics, url = served
    metrics.tick_duration.observe(0.03)
    samples = scrape(url)
    assert samples["tokenscale_tick_duration_seconds_count", ()] == 1
    assert samples["tokenscale_tick_duration_seconds_bucket", (("le", "0.05"),)] == 1
    assert samples["tokenscale_tick_duration_seconds_bucket", (("le", "0.025"),)] == 0


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
        host, port = metrics.serve("[::1]:0")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        record(metrics, "llama")
        assert scrape(f"http://[{host}]:{port}/metrics")["tokenscale_desired_replicas", service("ml", "llama")] == 3
    finally:
        metrics.close()
