"""Each baseline's arithmetic against the worked examples of its documentation."""

from __future__ import annotations

import math

from tokenscale.sim.baselines import (
    HPA_DEFAULT_SCALE_DOWN,
    HPA_DEFAULT_SCALE_UP,
    HpaAlgorithm,
    KpaAlgorithm,
    Oracle,
    StaticReplicas,
)

# --- Kubernetes HPA (kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale) --------


def test_hpa_defaults_are_the_documented_behaviour():
    assert HPA_DEFAULT_SCALE_UP.stabilization_window_s == 0
    assert {(p.kind, p.value, p.period_s) for p in HPA_DEFAULT_SCALE_UP.policies} == {
        ("Percent", 100, 15.0),
        ("Pods", 4, 15.0),
    }
    assert HPA_DEFAULT_SCALE_UP.select_policy == "Max"
    assert HPA_DEFAULT_SCALE_DOWN.stabilization_window_s == 300
    assert [(p.kind, p.value, p.period_s) for p in HPA_DEFAULT_SCALE_DOWN.policies] == [("Percent", 100, 15.0)]


def test_hpa_average_value_is_ceil_of_total_over_target():
    # desiredReplicas = ceil[currentReplicas * currentMetricValue / desiredMetricValue]; for an
    # AverageValue target the current value is total / currentReplicas: ceil(total / target).
    assert HpaAlgorithm.external_average_value(3000, 1000, current=2, tolerance=0.1) == 3
    # the docs' example: current 200m against 100m desired doubles the replicas
    assert HpaAlgorithm.external_average_value(2 * 200, 100, current=2, tolerance=0.1) == 4
    # and 50m against 100m halves them
    assert HpaAlgorithm.external_average_value(4 * 50, 100, current=4, tolerance=0.1) == 2


def test_hpa_tolerance_skips_changes_within_ten_percent():
    # ratio 2100 / (2 x 1000) = 1.05: inside the 0.1 tolerance, the count stays
    assert HpaAlgorithm.external_average_value(2100, 1000, current=2, tolerance=0.1) == 2
    # ratio 1.15: outside, ceil(2300 / 1000) = 3
    assert HpaAlgorithm.external_average_value(2300, 1000, current=2, tolerance=0.1) == 3
    # ratio 2550 / (3 x 1000) = 0.85: outside the band, but ceil(2550 / 1000) is still 3
    assert HpaAlgorithm.external_average_value(2550, 1000, current=3, tolerance=0.1) == 3


def test_hpa_scale_up_is_limited_to_double_or_four_pods_per_fifteen_seconds():
    hpa = HpaAlgorithm(min_replicas=1, max_replicas=100)
    assert hpa.scale_up_limit(1, now=0) == 5  # max(1 x 200%, 1 + 4)
    assert hpa.scale_up_limit(10, now=0) == 20  # max(10 x 200%, 10 + 4)
    assert hpa.normalise(50, current=1, now=0) == 5
    # within the same 15 s period the pods already added count against the limit
    assert hpa.normalise(50, current=5, now=10) == 5
    # next period: from 5, max(10, 9) = 10
    assert hpa.normalise(50, current=5, now=16) == 10


def test_hpa_scale_down_takes_the_highest_recommendation_of_the_last_five_minutes():
    hpa = HpaAlgorithm(min_replicas=1, max_replicas=100)
    assert hpa.normalise(8, current=8, now=0) == 8
    assert hpa.normalise(3, current=8, now=60) == 8  # 8 was recommended 60 s ago
    assert hpa.normalise(2, current=8, now=299) == 8
    assert hpa.normalise(2, current=8, now=301) == 3  # the 8 has left the window; 3 (at 60 s) is the highest
    assert hpa.normalise(2, current=3, now=400) == 2
    # the default scale-down policy (100% per 15 s) allows going all the way at once
    assert hpa.scale_down_limit(10, now=1000) == 0


def test_hpa_respects_min_and_max():
    hpa = HpaAlgorithm(min_replicas=2, max_replicas=6)
    assert hpa.normalise(20, current=4, now=0) == 6
    hpa = HpaAlgorithm(min_replicas=2, max_replicas=6, scale_down=HPA_DEFAULT_SCALE_DOWN.__class__(0.0, ()))
    assert hpa.stabilise(0, current=4, now=0) == 0
    assert HpaAlgorithm(min_replicas=2, max_replicas=6).normalise(0, current=2, now=0) == 2


def test_keda_on_queue_depth_is_an_hpa_on_average_value():
    # KEDA's Prometheus scaler, metricType AverageValue, threshold 2: 10 queued -> 5 replicas
    assert HpaAlgorithm.external_average_value(10, 2, current=1, tolerance=0.1) == 5
    # no queue: the HPA asks for 0, clamped to minReplicas (the oscillation queue-only scaling shows)
    assert HpaAlgorithm.external_average_value(0, 2, current=4, tolerance=0.1) == 0
    assert HpaAlgorithm(min_replicas=1).normalise(0, current=1, now=0) == 1


# --- Knative KPA (knative.dev/docs/serving/autoscaling/kpa-specific) -----------------------------


def test_kpa_stable_mode_is_ceil_of_concurrency_over_target():
    kpa = KpaAlgorithm(target=10)
    assert kpa.scale(stable_concurrency=35, panic_concurrency=35, ready_pods=4, now=0) == 4
    assert kpa.scale(stable_concurrency=41, panic_concurrency=41, ready_pods=4, now=2) == 5


def test_kpa_panics_at_twice_the_ready_capacity_and_never_scales_down_in_panic():
    kpa = KpaAlgorithm(target=10)
    # panic window: 45 in flight over 2 ready pods at 10 each = 2.25x >= 200%
    assert kpa.scale(stable_concurrency=20, panic_concurrency=45, ready_pods=2, now=0) == 5
    assert kpa.panic_time == 0
    # load falls; still inside the 60 s stable window since the last panic: no scale-down
    assert kpa.scale(stable_concurrency=15, panic_concurrency=10, ready_pods=5, now=30) == 5
    assert kpa.scale(stable_concurrency=15, panic_concurrency=10, ready_pods=5, now=59) == 5
    # 60 s without panic conditions: back to stable mode, ceil(15 / 10) = 2 ... bounded by the
    # max scale-down rate 2: floor(5 / 2) = 2
    assert kpa.scale(stable_concurrency=15, panic_concurrency=10, ready_pods=5, now=60) == 2
    assert kpa.panic_time is None


def test_kpa_below_the_panic_threshold_stays_stable():
    kpa = KpaAlgorithm(target=10)
    # 39 / 10 / 2 = 1.95 < 2: no panic, the stable window decides
    assert kpa.scale(stable_concurrency=12, panic_concurrency=39, ready_pods=2, now=0) == 2
    assert kpa.panic_time is None


def test_kpa_scale_down_rate_halves_at_most():
    kpa = KpaAlgorithm(target=10)
    assert kpa.scale(stable_concurrency=0, panic_concurrency=0, ready_pods=10, now=0) == 5
    assert kpa.max_scale_up_rate == 1000 and kpa.max_scale_down_rate == 2
    assert math.isclose(kpa.stable_window_s * 0.1, 6.0)


# --- static and oracle ---------------------------------------------------------------------------


def test_static_never_changes():
    static = StaticReplicas(7)
    assert static.initial_replicas(None) == 7
    assert static.decide(0, None) == 7 and static.decide(10_000, None) == 7


def test_oracle_provisions_the_coming_peak_at_its_utilisation():
    import numpy as np

    class FakeSim:
        work_per_second = np.array([1.0] * 20 + [6.0] * 10 + [1.0] * 40)

    oracle = Oracle(0.8, lookahead_s=15, smooth_s=2, max_replicas=64)
    assert oracle.instant_startup
    assert oracle.decide(0, FakeSim()) == 2  # ceil(1 / 0.8): the burst is 20 s away, beyond the lookahead
    assert oracle.decide(10, FakeSim()) == 8  # ceil(6 / 0.8): the burst is inside the lookahead
    assert oracle.decide(50, FakeSim()) == 2
