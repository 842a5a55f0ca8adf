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
