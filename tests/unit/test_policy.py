"""Table-driven tests of `tokenscale.policy.decide`: one table per rule, each row a situation."""

from __future__ import annotations

import json
import math

import pytest

from tokenscale.api.models import AutoscalerState, AutoscalingSpec
from tokenscale.policy import (
    DemandPoint,
    History,
    Recommendation,
    ReplicaState,
    Signals,
    decide,
    history_from_status,
    history_to_status,
    replicas_for,
)

NOW = 10_000.0
CAPACITY = 1000.0  # target tokens/s per replica in these tables


def spec(**overrides) -> AutoscalingSpec:
    values = {
        "min_replicas": 1,
        "max_replicas": 10,
        "target_tokens_per_second_per_replica": CAPACITY,
        "target_queue_depth_per_replica": 4,
        "backlog_drain_seconds": 30,
        "tolerance": 0.1,
        "scale_down": {"stabilization_seconds": 300, "max_step_percent": 50, "max_step_pods": 1},
    }
    values.update(overrides)
    return AutoscalingSpec.model_validate(values)


def steady(replicas: int = 1, since: float = NOW - 1000) -> History:
    """A history in which `replicas` was recommended long enough to cover every window."""
    return History(recommendations=(Recommendation(time=since, replicas=replicas),))


def signals(tps=0.0, queue=0.0, **more) -> Signals:
    return Signals(tokens_per_second=tps, queue_depth=queue, sample_age_seconds=5.0, **more)


def run(sig: Signals, current: int, ready: int | None = None, unschedulable: int = 0, history=None,
        now: float = NOW, **spec_overrides):
    state = ReplicaState(current=current, ready=current if ready is None else ready, unschedulable=unschedulable)
    return decide(sig, spec(**spec_overrides), state, steady() if history is None else history, now)


def check(decision, desired: int, limited_by: str):
    assert (decision.desired, decision.limited_by) == (desired, limited_by), decision.reason
    assert decision.reason and decision.reason.endswith(".")


# --- the demand rules ------------------------------------------------------------------------

DEMAND = [
    # (case, signals, current, desired, limited_by, expected recommendations)
    ("served tokens need more", signals(3500), 2, 4, "tokens", {"tokens": 4, "queue": 0}),
    ("exactly at capacity", signals(3000), 3, 3, "tokens", {"tokens": 3, "queue": 0}),
    (
        "backlog from the measured output length",
        signals(2200, queue=6, mean_output_tokens=500),  # 2200 + 6*500/30 = 2300 tok/s
        2, 3, "tokens", {"tokens": 3, "queue": 2},
    ),
    (
        "backlog from the running batch's per-request rate",
        signals(2000, queue=8, running_requests=40),  # 2000 + 8*(2000/40) = 2400 tok/s
        2, 3, "tokens", {"tokens": 3, "queue": 2},
    ),
    (
        "queue rule when tokens/s is flat at capacity",
        signals(2000, queue=20, mean_output_tokens=1),  # tokens 2001/s: within the band at 2
        2, 3, "queue", {"tokens": 3, "queue": 3},
    ),
    (
        "kv cache near full",
        signals(1500, kv_cache_usage=0.99, ready_pods_reporting=2),
        2, 3, "kvCache", {"tokens": 2, "queue": 0, "kvCache": 3},
    ),
    (
        "kv cache below its target gives no opinion",
        signals(1500, kv_cache_usage=0.5),
        2, 2, "tokens", {"tokens": 2, "queue": 0},
    ),
    (
        "ttft above target",
        signals(1500, ttft_p90_seconds=3.0),
        2, 4, "ttft", {"tokens": 2, "queue": 0, "ttft": 4},
    ),
]


@pytest.mark.parametrize("case,sig,current,desired,limited_by,recommendations", DEMAND, ids=[c[0] for c in DEMAND])
def test_demand_rules(case, sig, current, desired, limited_by, recommendations):
    decision = run(sig, current, target_time_to_first_token_seconds=1.0)
    check(decision, desired, limited_by)
    assert decision.recommendations == recommendations
    assert decision.metrics_available and not decision.panic


def test_replicas_for_rounds_up_without_float_noise():
    assert [replicas_for(v, 1500.0) for v in (0, 1, 1500, 1500.0000001, 3000, 4500.0 * (1 + 1e-12))] == [
        0, 1, 1, 1, 2, 3]


# --- bounds, tolerance and small-count hysteresis --------------------------------------------

BAND = [
    # (case, tokens/s, current, desired, limited_by, overrides)
    ("within the band above target", 1080, 1, 1, "tolerance", {}),
    ("above the band", 1120, 1, 2, "tokens", {}),
    ("2 -> 1 only if one replica holds the load at 90%", 950, 2, 2, "tolerance", {}),
    ("2 -> 1 when it fits", 890, 2, 1, "tokens", {}),
    ("4 -> 3 needs 2700 tok/s or less", 2800, 4, 4, "tolerance", {}),
    ("4 -> 3 when it fits", 2650, 4, 3, "tokens", {}),
    ("no tolerance acts on any change", 1001, 1, 2, "tokens", {"tolerance": 0}),
    ("maxReplicas caps", 50_000, 10, 10, "maxReplicas", {}),
    ("maxReplicas caps a scale-up", 19_000, 8, 10, "maxReplicas", {}),
    ("minReplicas holds", 0, 3, 3, "minReplicas", {"min_replicas": 3}),
    ("above max after a spec change", 5000, 12, 10, "maxReplicas", {}),
    ("below min after a spec change", 0, 1, 3, "minReplicas", {"min_replicas": 3}),
]


@pytest.mark.parametrize("case,tps,current,desired,limited_by,overrides", BAND, ids=[c[0] for c in BAND])
def test_bounds_tolerance_and_hysteresis(case, tps, current, desired, limited_by, overrides):
    overrides.setdefault("scale_up", {"stabilization_seconds": 0, "max_step_percent": 100, "max_step_pods": 4})
    decision = run(signals(tps), current, **overrides)
    check(decision, desired, limited_by)
    assert decision.scaling_limited == (limited_by == "maxReplicas")


def test_a_rising_load_scales_up_at_the_target_itself():
    # The band's upper half is against noise; with the 1-minute rate above the 5-minute one the load
    # is rising, and the count goes up as soon as the demand passes the target.
    fast = {"scale_up": {"stabilization_seconds": 0, "max_step_percent": 100, "max_step_pods": 4}}
    check(run(signals(1080, tokens_per_second_long=900), 1, **fast), 2, "tokens")
    check(run(signals(1080, tokens_per_second_long=1080), 1, **fast), 1, "tolerance")  # flat: the band holds
    check(run(signals(1080, tokens_per_second_long=1200), 1, **fast), 1, "tolerance")  # falling
    check(run(signals(990, tokens_per_second_long=900), 1, **fast), 1, "tokens")  # rising, under the target
    # the lower half is unchanged: a falling load still scales down only to a count that holds it at 90%
    check(run(signals(950, tokens_per_second_long=1200), 2, **fast), 2, "tolerance")


def test_bounds_apply_even_without_metrics():
    decision = run(Signals(), 12)
    check(decision, 10, "maxReplicas")


# --- rate limits and stabilisation windows ---------------------------------------------------

RATES = [
    # (case, tokens/s, current, history, desired, limited_by, overrides)
    ("up: percent (100% of 8) wins over 4 pods", 30_000, 8, None, 16, "scaleUpRate", {"max_replicas": 40}),
    ("up: 4 pods win over 100% of 1", 30_000, 1, None, 5, "scaleUpRate", {"max_replicas": 40}),
    ("up: both small", 30_000, 4, None, 5, "scaleUpRate",
     {"max_replicas": 40, "scale_up": {"stabilization_seconds": 0, "max_step_percent": 10, "max_step_pods": 1}}),
    ("down: 50% of 8 wins over 1 pod (the defaults)", 100, 8, None, 4, "scaleDownRate", {}),
    ("down: 3 pods win over 10% of 8", 100, 8, None, 5, "scaleDownRate",
     {"scale_down": {"stabilization_seconds": 300, "max_step_percent": 10, "max_step_pods": 3}}),
    ("down: one pod a step", 100, 8, None, 7, "scaleDownRate",
     {"scale_down": {"stabilization_seconds": 300, "max_step_percent": 10, "max_step_pods": 1}}),
    ("down: the window's highest recommendation wins", 100, 8,
     History(recommendations=(Recommendation(NOW - 1000, 8), Recommendation(NOW - 400, 6), Recommendation(NOW - 50, 2))),
     6, "scaleDownStabilization",
     {"scale_down": {"stabilization_seconds": 300, "max_step_percent": 100, "max_step_pods": 10}}),
    ("down: the recommendation in effect at the window's start counts", 100, 8,
     History(recommendations=(Recommendation(NOW - 1000, 7), Recommendation(NOW - 200, 1))),
     7, "scaleDownStabilization",
     {"scale_down": {"stabilization_seconds": 300, "max_step_percent": 100, "max_step_pods": 10}}),
    ("down: none before the window is covered", 100, 8,
     History(recommendations=(Recommendation(NOW - 100, 8),)), 8, "scaleDownStabilization", {}),
    ("down: window 0 acts at once", 100, 8, History(), 1, "tokens",
     {"scale_down": {"stabilization_seconds": 0, "max_step_percent": 100, "max_step_pods": 10}}),
    ("up: window keeps the lowest recommendation", 5000, 2,
     History(recommendations=(Recommendation(NOW - 1000, 2), Recommendation(NOW - 70, 3), Recommendation(NOW - 20, 4))),
     3, "scaleUpStabilization",
     {"scale_up": {"stabilization_seconds": 60, "max_step_percent": 100, "max_step_pods": 4}}),
]


@pytest.mark.parametrize("case,tps,current,history,desired,limited_by,overrides", RATES, ids=[c[0] for c in RATES])
def test_rate_limits_and_windows(case, tps, current, history, desired, limited_by, overrides):
    decision = run(signals(tps), current, history=history, panic_threshold=100, **overrides)
    check(decision, desired, limited_by)
    assert decision.scaling_limited == (limited_by in ("scaleUpRate", "scaleDownRate"))


def test_scale_down_walks_down_one_step_per_decision_after_the_window():
    history, current, path = History(), 6, []
    for tick in range(40):
        decision = run(signals(500), current, history=history, now=NOW + 15 * tick)
        history, current = decision.history, decision.desired
        path.append(current)
    # 300 s of recommendations (20 ticks) before the first step, then 50% (at least 1 pod) a tick.
    assert path[:20] == [6] * 20
    assert path[20:25] == [3, 2, 1, 1, 1]


# --- panic -----------------------------------------------------------------------------------


def test_panic_scales_up_at_once_past_the_rate_limit():
    decision = run(signals(9000), 2, max_replicas=20)  # 9000 >= 2 x 2 x 1000
    check(decision, 9, "panic")
    assert decision.panic and decision.history.panic_until == NOW + 300


def test_panic_is_bounded_by_max():
    decision = run(signals(90_000), 2)
    check(decision, 10, "maxReplicas")
    assert decision.panic and decision.scaling_limited


def test_no_scale_down_until_panic_ends():
    history = History(recommendations=(Recommendation(NOW - 1000, 1),), panic_until=NOW + 10)
    during = run(signals(100), 9, history=history)
    check(during, 9, "panic")
    after = run(signals(100), 9, history=history, now=NOW + 11)
    assert after.desired == 5 and not after.panic and after.history.panic_until is None


def test_panic_counts_pending_capacity():
    # 5000 tok/s against 1 ready + 2 loading: 5000 < 2 x 3 x 1000, no panic and no pile-up.
    calm = run(signals(5000), 3, ready=1)
    check(calm, 3, "coldStart")
    assert not calm.panic
    burst = run(signals(7000), 3, ready=1)
    check(burst, 7, "panic")


# --- cold starts and unschedulable pods ------------------------------------------------------

COLD = [
    # (case, signals, current, ready, unschedulable, desired, limited_by, scaling_limited)
    ("pending replicas absorb the same demand", signals(1900, queue=30), 3, 1, 0, 3, "coldStart", False),
    ("no ready replica yet: hold", Signals(), 2, 0, 0, 2, "coldStart", False),
    ("unschedulable pods stop scale-up", signals(3500), 3, 2, 1, 3, "unschedulable", True),
    ("unschedulable pods with no ready pod", Signals(), 2, 0, 2, 2, "unschedulable", True),
    ("unschedulable pods still allow scale-down", signals(100), 3, 2, 1, 2, "scaleDownRate", True),
]


@pytest.mark.parametrize("case,sig,current,ready,unschedulable,desired,limited_by,limited", COLD,
                         ids=[c[0] for c in COLD])
def test_cold_start_and_unschedulable(case, sig, current, ready, unschedulable, desired, limited_by, limited):
    decision = run(sig, current, ready=ready, unschedulable=unschedulable)
    check(decision, desired, limited_by)
    assert decision.scaling_limited == limited
    if unschedulable:
        assert "cannot be scheduled" in decision.scaling_limited_reason
    assert decision.metrics_available


# --- missing, stale and NaN metrics ----------------------------------------------------------

MISSING = [
    ("tokens missing", Signals(queue_depth=0.0, sample_age_seconds=1)),
    ("queue missing", Signals(tokens_per_second=0.0, sample_age_seconds=1)),
    ("tokens NaN", Signals(tokens_per_second=math.nan, queue_depth=0.0)),
    ("queue NaN", Signals(tokens_per_second=0.0, queue_depth=math.nan)),
    ("tokens infinite", Signals(tokens_per_second=math.inf, queue_depth=0.0)),
    ("stale", Signals(tokens_per_second=0.0, queue_depth=0.0, sample_age_seconds=61)),
    ("age NaN", Signals(tokens_per_second=0.0, queue_depth=0.0, sample_age_seconds=math.nan)),
    ("everything missing", Signals()),
]


@pytest.mark.parametrize("case,sig", MISSING, ids=[c[0] for c in MISSING])
def test_missing_data_holds(case, sig):
    decision = run(sig, 5)
    check(decision, 5, "hold:metricsUnavailable")
    assert not decision.metrics_available
    assert decision.history.recommendations[-1] == Recommendation(NOW, 5)


@pytest.mark.parametrize("current,fallback,desired", [(2, 4, 4), (6, 4, 6), (4, 4, 4)])
def test_missing_data_scales_to_fallback_never_below_current(current, fallback, desired):
    decision = run(Signals(), current, on_metrics_unavailable="ScaleTo", fallback_replicas=fallback)
    check(decision, desired, "fallback:metricsUnavailable")
    assert not decision.metrics_available


def test_optional_signals_that_are_nan_are_ignored():
    decision = run(signals(1500, kv_cache_usage=math.nan, ttft_p90_seconds=math.nan, running_requests=math.nan),
                   2, target_time_to_first_token_seconds=1.0)
    check(decision, 2, "tokens")
    assert set(decision.recommendations) == {"tokens", "queue"}


def test_an_outage_restarts_the_scale_down_window():
    history = steady(6)
    for tick in range(10):  # 150 s without metrics
        history = run(Signals(), 6, history=history, now=NOW + 15 * tick).history
    back = run(signals(100), 6, history=history, now=NOW + 150)
    check(back, 6, "scaleDownStabilization")


def test_partial_metrics_allow_no_scale_down():
    decision = run(signals(100, ready_pods_reporting=2), 4)
    check(decision, 4, "hold:partialMetrics")


# --- scale to zero and activation ------------------------------------------------------------

ZERO = {"min_replicas": 0, "activation": {"query": "sum(gateway_queue)"}, "scale_to_zero_after_seconds": 600}
IDLE = signals(0, running_requests=0, activation=0)


def test_idle_replica_goes_to_zero_only_after_the_idle_window():
    history, path = steady(1), []
    for tick in range(45):
        decision = run(IDLE, 1, history=history, now=NOW + 15 * tick, **ZERO)
        history = decision.history
        path.append(decision.desired)
    assert path.index(0) == 40  # 600 s / 15 s
    assert set(path[:40]) == {1}


def test_any_activity_restarts_the_idle_window():
    history = run(IDLE, 1, now=NOW, **ZERO).history
    assert history.idle_since == NOW
    busy = run(signals(0, running_requests=1, activation=0), 1, history=history, now=NOW + 300, **ZERO)
    assert busy.history.idle_since is None
    again = run(IDLE, 1, history=busy.history, now=NOW + 700, **ZERO)
    assert again.desired == 1 and again.history.idle_since == NOW + 700


def test_min_replicas_above_zero_never_scales_to_zero():
    decision = run(IDLE, 1, history=History(idle_since=NOW - 10_000))
    check(decision, 1, "minReplicas")


ZERO_TABLE = [
    # (case, signals, desired, limited_by, metrics_available)
    ("activation wakes 0 -> 1", Signals(activation=3.0), 1, "activation", True),
    ("no activation stays at zero", Signals(activation=0.0), 0, "scaleToZero", True),
    ("missing tokens/s at zero is normal", Signals(activation=0.0, sample_age_seconds=10_000), 0, "scaleToZero", True),
    ("missing activation holds at zero", Signals(), 0, "hold:metricsUnavailable", False),
    ("NaN activation holds at zero", Signals(activation=math.nan), 0, "hold:metricsUnavailable", False),
]


@pytest.mark.parametrize("case,sig,desired,limited_by,available", ZERO_TABLE, ids=[c[0] for c in ZERO_TABLE])
def test_at_zero(case, sig, desired, limited_by, available):
    decision = run(sig, 0, **ZERO)
    check(decision, desired, limited_by)
    assert decision.metrics_available == available


def test_zero_replicas_below_min_scale_to_min():
    check(run(Signals(), 0, min_replicas=2), 2, "minReplicas")


# --- history and explanations ----------------------------------------------------------------


def test_history_round_trips_through_status_json():
    history = History(
        recommendations=(Recommendation(1.5, 3), Recommendation(16.5, 4)),
        panic_until=300.0,
        idle_since=None,
        last_scale_up=16.5,
        last_scale_down=1.0,
        last_queue_depth=12.0,
        last_queue_time=16.5,
        demand_extremes=(DemandPoint(1.5, 800.0), DemandPoint(16.5, 950.0)),
    )
    state = history_to_status(history)
    wire = json.loads(json.dumps(state.model_dump(by_alias=True, mode="json")))
    assert {"panicUntil", "lastScaleUp", "lastQueueDepth", "lastQueueTime", "demandExtremes"} <= set(wire)
    assert history_from_status(AutoscalerState.model_validate(wire)) == history
    assert history_from_status(None) == History()


def test_a_restart_from_status_decides_as_if_never_stopped():
    kept, restored, current = History(), History(), 2
    for tick, tps in enumerate([2500, 2500, 4000, 4000, 900, 900, 900, 900] * 5):
        sig, now = signals(tps), NOW + 45 * tick
        direct = run(sig, current, history=kept, now=now)
        via_status = run(sig, current, history=restored, now=now)
        assert direct == via_status
        kept = direct.history
        restored = history_from_status(AutoscalerState.model_validate(
            json.loads(json.dumps(history_to_status(direct.history).model_dump(by_alias=True)))))
        current = direct.desired


def test_history_keeps_only_the_longest_window():
    history = History()
    for tick in range(200):
        history = run(signals(1000 + 500 * (tick % 7)), 3, history=history, now=NOW + 15 * tick).history
    times = [item.time for item in history.recommendations]
    assert times[0] <= NOW + 15 * 199 - 300 < times[1]  # one entry in effect at the window's start
    assert len(times) <= 21


def test_decisions_are_deterministic_and_explained():
    sig = signals(5000, queue=12, running_requests=30)  # 5000 + 12 x 5000/30 = 7000 tok/s
    first, second = run(sig, 2, panic_threshold=4), run(sig, 2, panic_threshold=4)
    assert first == second
    assert first.recommendations["tokens"] == 7 and (first.desired, first.limited_by) == (6, "scaleUpRate")
    assert "4 pod(s)" in first.reason and "demand" in first.reason


# --- arrivals from the queue's growth --------------------------------------------------------

GROWTH = [
    # (case, history queue sample, queue now, tokens/s, current, tokens recommendation)
    ("no earlier sample: generated + backlog", None, 150, 1000, 1, 2),  # 1000 + 150*100/30
    ("a growing queue is demand not yet generated", (0, NOW - 15), 150, 1000, 1, 3),  # + 150/15*100
    ("a sample older than the stale limit is ignored", (0, NOW - 61), 150, 1000, 1, 2),
    ("a draining queue is generated backlog, not new demand", (300, NOW - 15), 150, 3000, 3, 3),  # 3000-1000+500
]


@pytest.mark.parametrize("case,sample,queue,tps,current,tokens", GROWTH, ids=[c[0] for c in GROWTH])
def test_queue_growth_estimates_arrivals(case, sample, queue, tps, current, tokens):
    history = steady()
    if sample is not None:
        history = History(recommendations=history.recommendations, last_queue_depth=sample[0], last_queue_time=sample[1])
    decision = run(signals(tps, queue=queue, mean_output_tokens=100), current, history=history,
                   panic_threshold=10, target_queue_depth_per_replica=1000)
    assert decision.recommendations["tokens"] == tokens, decision.reason
    assert (decision.history.last_queue_depth, decision.history.last_queue_time) == (queue, NOW)


def test_missing_metrics_forget_the_queue_sample():
    history = History(last_queue_depth=10.0, last_queue_time=NOW - 15)
    decision = run(Signals(), 2, history=history)
    assert decision.history.last_queue_depth is None and decision.history.last_queue_time is None


# --- burst headroom --------------------------------------------------------------------------


def lows(*samples: tuple[float, float]) -> History:
    return History(recommendations=steady().recommendations,
                   demand_extremes=tuple(DemandPoint(time, tps) for time, tps in samples))


def test_burst_headroom_holds_a_multiple_of_the_baseline_demand():
    decision = run(signals(1000), 2, history=lows(), burst_headroom=4)
    check(decision, 4, "headroom")
    assert decision.recommendations["headroom"] == 4 and decision.recommendations["tokens"] == 1


def test_a_burst_does_not_raise_its_own_headroom():
    # The window's low (1,000 tok/s) sets the headroom; the burst is sized by the target alone, and
    # only once the pods show overload (a queue, or the KV cache full): until then the headroom
    # serves it.
    history = lows((NOW - 600, 1000.0))
    quiet = run(signals(6000), 4, history=history, burst_headroom=4)
    assert quiet.recommendations["headroom"] == 4
    check(quiet, 4, "headroom")
    assert [low.tokens_per_second for low in quiet.history.demand_extremes] == [1000.0, 6000.0]
    overloaded = run(signals(5700, queue=2, mean_output_tokens=100), 4, history=history, burst_headroom=4)
    check(overloaded, 6, "tokens")  # 5,700 + 2 x 100 / 30 tok/s
    full_cache = run(signals(5700, kv_cache_usage=0.95), 4, history=history, burst_headroom=4)
    check(full_cache, 6, "tokens")


def test_the_headroom_follows_the_baseline_down_and_up():
    # A lower sample replaces every higher one: the low is the window's minimum.
    history = lows((NOW - 600, 1000.0), (NOW - 300, 3000.0))
    decision = run(signals(500), 4, history=history, burst_headroom=4)
    assert decision.recommendations["headroom"] == 2
    assert [(low.time, low.tokens_per_second) for low in decision.history.demand_extremes] == [(NOW, 500.0)]
    # A low older than the window no longer counts: the baseline rises to what the window saw.
    later = run(signals(4000), 4, history=history, now=NOW + 1300, burst_headroom=4, burst_window_seconds=1800)
    assert later.recommendations["headroom"] == 12  # 4 x 3,000 tok/s (the 1,000 one left the window)


def test_the_headroom_keeps_the_count_while_it_moves_within_the_tolerance():
    # The low wanders with the traffic's noise; a hold that moves by less than the tolerance band
    # keeps the count, so the ceiling of a noisy estimate does not flip it by one replica.
    history = lows((NOW - 600, 1000.0))
    inside = run(signals(1050), 4, history=history, burst_headroom=4.2)  # 4,200 tok/s: 4.2 at 1,000
    assert inside.recommendations["headroom"] == 4
    check(inside, 4, "headroom")
    outside = run(signals(1050), 4, history=history, burst_headroom=4.6)  # 4,600: above 4 x 1.1
    check(outside, 5, "headroom")
    below = run(signals(1050), 6, history=history, burst_headroom=4.2)  # under 6 x 0.9: sized anew
    assert below.recommendations["headroom"] == 5


def test_without_burst_headroom_nothing_is_recorded():
    decision = run(signals(1000), 2, history=steady(2))
    assert "headroom" not in decision.recommendations and decision.history.demand_extremes == ()


def test_peak_baseline_holds_what_the_last_burst_needed():
    # Traffic that falls to nothing between bursts: the window's peak, not its low, sets the hold.
    history = lows((NOW - 900, 5000.0), (NOW - 300, 2000.0))
    decision = run(signals(0), 6, history=history, burst_headroom=1.5, burst_baseline="Peak")
    assert decision.recommendations["headroom"] == 8  # 1.5 x 5,000 tok/s at 1,000 each
    assert [low.tokens_per_second for low in decision.history.demand_extremes] == [5000.0, 2000.0, 0.0]
    # Once the burst leaves the window, the next highest sample sets it.
    later = run(signals(0), 6, history=decision.history, now=NOW + 1000, burst_headroom=1.5,
                burst_baseline="Peak", burst_window_seconds=1800)
    assert later.recommendations["headroom"] == 3


def test_the_burst_window_keeps_a_bounded_history_in_status():
    # A day of steadily climbing demand: every sample would be a candidate low; status keeps ~32.
    history, day = History(), 86_400
    for tick in range(0, day, 15 * 8):  # every 8th tick of a day, to keep the test fast
        decision = run(signals(100 + tick / 100), 1, history=history, now=NOW + tick, max_replicas=1000,
                       burst_headroom=2, burst_window_seconds=day)
        history = decision.history
    assert 2 <= len(history.demand_extremes) <= 33
    assert history.demand_extremes[0].tokens_per_second == 100  # the window's low is still the first
