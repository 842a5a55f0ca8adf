"""The autoscaler's pure helpers: settings -> Prometheus client config, status values, cost."""

from __future__ import annotations

import math

import pytest

from tokenscale.api import parse_spec
from tokenscale.autoscaler import (
    Autoscaler,
    condition_reason,
    cost_per_million_tokens,
    signals_status,
    source_config,
)
from tokenscale.metrics.promql import PromQLError
from tokenscale.metrics.source import ServiceRef
from tokenscale.policy import Signals
from tokenscale.settings import Settings


def test_no_prometheus_url_means_no_source_and_acondition_reason():
    assert source_config(Settings()) is None
    scaler = Autoscaler(None, Settings())
    signals, why = scaler.read_signals([ServiceRef("ns", "svc")], now=0.0)
    assert signals == {} and "--prometheus-url" in why
    scaler.close()


def test_settings_map_onto_the_prometheus_client():
    settings = Settings(prometheus_url="https://prom.monitoring:9090", prometheus_bearer_token_file="/var/run/token",
                        prometheus_username="reader", prometheus_password_file="/etc/pw", prometheus_ca_file="/etc/ca",
                        prometheus_headers=(("X-Scope-OrgID", "team-a"),), prometheus_timeout=3.0,
                        service_label="svc", namespace_label="kubernetes_namespace",
                        rate_window="30s", long_rate_window="2m")
    config = source_config(settings)
    assert config.url == "https://prom.monitoring:9090" and config.timeout_seconds == 3.0
    assert (config.bearer_token_file, config.username, config.password_file, config.ca_file) == (
        "/var/run/token", "reader", "/etc/pw", "/etc/ca")
    assert config.headers == (("X-Scope-OrgID", "team-a"),)
    assert (config.grouping.service_label, config.grouping.namespace_label) == ("svc", "kubernetes_namespace")
    assert (config.windows.short, config.windows.long) == ("30s", "2m")


@pytest.mark.parametrize("bad", [{"service_label": 'x"}'}, {"rate_window": "1m]"}])
def test_settings_that_would_inject_are_refused(bad):
    with pytest.raises(PromQLError):
        source_config(Settings(prometheus_url="http://prom:9090", **bad))


def test_condition_reasons_are_camel_case():
    assert condition_reason("maxReplicas") == "MaxReplicas"
    assert condition_reason("hold:metricsUnavailable") == "HoldMetricsUnavailable"
    assert condition_reason("scaleDownStabilization") == "ScaleDownStabilization"
    assert condition_reason("") == "Unknown"


def test_signals_status_leaves_out_what_is_missing_or_not_finite():
    status = signals_status(Signals(tokens_per_second=1234.56789, queue_depth=float("nan"),
                                    kv_cache_usage=float("inf"), activation=0.0), at=0.0)
    assert status == {"tokensPerSecond": 1234.568, "activation": 0.0, "sampledAt": "1970-01-01T00:00:00Z"}


def test_cost_per_million_tokens():
    spec = parse_spec({"model": {"source": "m"}, "resources": {"gpus": 2}, "costPerGpuHour": 3.0})
    # 3 replicas x 2 GPUs x $3/h = $18/h; 1000 tok/s = 3.6 M tok/h: $5 per million tokens.
    assert cost_per_million_tokens(spec, 3, 1000.0) == pytest.approx(5.0)
    assert cost_per_million_tokens(spec, 3, 0.0) is None  # nothing generated: no per-token cost
    assert cost_per_million_tokens(spec, 3, None) is None and cost_per_million_tokens(spec, 3, math.nan) is None
    unpriced = parse_spec({"model": {"source": "m"}})
    assert cost_per_million_tokens(unpriced, 3, 1000.0) is None


@pytest.mark.parametrize(("now", "tick", "expected"), [(100.0, 15.0, 5.0), (105.0, 15.0, 15.0), (11.5, 2.0, 0.5)])
def test_ticks_fall_on_a_fixed_grid_whatever_a_tick_took(now, tick, expected):
    from tokenscale.autoscaler import seconds_to_next_tick

    assert seconds_to_next_tick(now, tick) == pytest.approx(expected)
    assert (now + seconds_to_next_tick(now, tick)) % tick == pytest.approx(0.0, abs=1e-9)


class _FakeKube:
    """Answers the tick's requests: one service's writes fail (a 500), one's hang past the timeout."""

    def __init__(self):
        import threading

        self.calls = []
        self.release = threading.Event()

    def request(self, method, path, body=None, *, content_type="", timeout=None):
        import kubernetes

        self.calls.append((method, path))
        if "/broken/" in path:
            raise kubernetes.client.ApiException(status=500, reason="Internal Server Error")
        if "/slow/" in path:
            self.release.wait(timeout)
        return {}


def _views(names):
    from tokenscale.autoscaler import deployment_view, service_view

    spec = {"model": {"source": "m"}, "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}
    services = [service_view({"metadata": {"namespace": "ns", "name": n, "uid": f"uid-{n}", "generation": 1,
                                           "resourceVersion": "7"}, "spec": spec}) for n in names]
    deployments = {("ns", n): deployment_view({
        "metadata": {"name": n, "generation": 1, "resourceVersion": "3", "ownerReferences": [{"uid": f"uid-{n}"}]},
        "spec": {"replicas": 1}, "status": {"readyReplicas": 1, "replicas": 1, "updatedReplicas": 1,
                                           "observedGeneration": 1}}) for n in names}
    return services, deployments


def test_one_failing_or_slow_service_delays_no_other():
    import asyncio
    import time

    kube = _FakeKube()
    scaler = Autoscaler(kube, Settings(tick_seconds=1.0, request_timeout=5.0, write_concurrency=4))
    services, deployments = _views(["a", "broken", "slow", "b", "c"])
    started = time.perf_counter()
    report = asyncio.run(scaler.tick(services, deployments, {}))
    elapsed = time.perf_counter() - started
    kube.release.set()
    # No Prometheus: every service gets its conditions written once; the broken one fails alone and
    # the slow one is still in flight when the tick's budget (0.9 tick) ends.
    assert report.errors == 1 and report.status_writes == 3 and elapsed < 1.5
    written = {path.split("/")[-2] for method, path in kube.calls if method == "PATCH"}
    assert written == {"a", "broken", "slow", "b", "c"}
    assert not [c for c in kube.calls if c[0] == "GET"]  # no per-tick reads
    scaler.close()
