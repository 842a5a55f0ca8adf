"""Property tests of `decide` over random specs and random signal sequences (hypothesis)."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenscale.api.models import AutoscalingSpec
from tokenscale.policy import History, ReplicaState, Signals, decide

PROPERTY_SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def specs(draw) -> AutoscalingSpec:
    min_replicas = draw(st.integers(0, 4))
    max_replicas = draw(st.integers(max(1, min_replicas), 24))
    values = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_tokens_per_second_per_replica": draw(st.sampled_from([200.0, 1000.0, 1500.0])),
        "target_queue_depth_per_replica": draw(st.sampled_from([1.0, 4.0, 16.0])),
        "backlog_drain_seconds": draw(st.sampled_from([5.0, 30.0, 120.0])),
        "tolerance": draw(st.sampled_from([0.0, 0.1, 0.3])),
        "panic_threshold": draw(st.sampled_from([1.5, 2.0, 10.0])),
        "scale_up": {
            "stabilization_seconds": draw(st.sampled_from([0, 30])),
            "max_step_percent": draw(st.sampled_from([10, 100, 400])),
            "max_step_pods": draw(st.integers(1, 6)),
        },
        "scale_down": {
            "stabilization_seconds": draw(st.sampled_from([0, 60, 300])),
            "max_step_percent": draw(st.sampled_from([10, 50, 100])),
            "max_step_pods": draw(st.integers(1, 4)),
        },
        "target_time_to_first_token_seconds": draw(st.sampled_from([None, 0.5])),
        "burst_headroom": draw(st.sampled_from([1.0, 1.0, 3.0])),
        "burst_baseline": draw(st.sampled_from(["Low", "Low", "Peak"])),
        "burst_window_seconds": draw(st.sampled_from([60, 600])),
    }
    if min_replicas == 0:
        values["activation"] = {"query": "sum(gateway_queue)"}
        values["scale_to_zero_after_seconds"] = draw(st.sampled_from([0, 60, 600]))
    if draw(st.booleans()):
        values["on_metrics_unavailable"] = "ScaleTo"
        values["fallback_replicas"] = draw(st.integers(min_replicas, max_replicas))
    return AutoscalingSpec.model_validate(values)


def maybe(values: st.SearchStrategy) -> st.SearchStrategy:
    """A value, None or NaN."""
    return st.one_of(values, st.just(None), st.just(math.nan))


@st.composite
def signal_samples(draw, spec: AutoscalingSpec) -> Signals:
    """Load in units of replicas' worth (so every rule and bound gets its turn); one in ten broken."""
    capacity = spec.target_tokens_per_second_per_replica
    tokens = draw(st.floats(0, 1.3 * spec.max_replicas, allow_nan=False)) * capacity
    queue = draw(st.one_of(st.just(0.0), st.floats(0, 3 * spec.max_replicas * spec.target_queue_depth_per_replica)))
    age = draw(st.floats(0, 30))
    if draw(st.integers(0, 9)) == 0:
        tokens = draw(st.sampled_from([tokens, None, math.nan]))
        queue = draw(st.sampled_from([queue, None, math.nan]))
        age = draw(st.one_of(st.just(age), st.floats(61, 10_000), st.just(math.nan)))
    return Signals(
        tokens_per_second=tokens,
        queue_depth=queue,
        running_requests=draw(maybe(st.floats(0, 500, allow_nan=False))),
        mean_output_tokens=draw(st.one_of(st.just(None), st.floats(1, 4000))),
        kv_cache_usage=draw(maybe(st.floats(0, 1))),
        ttft_p90_seconds=draw(maybe(st.floats(0, 5))),
        activation=draw(maybe(st.floats(0, 10))),
        sample_age_seconds=age,
    )


def metrics_unusable(signals: Signals, spec: AutoscalingSpec) -> bool:
    age = signals.sample_age_seconds
    return bool(signals.core_missing()) or (age is not None and (math.isnan(age) or age > spec.metrics_stale_after_seconds))


@st.composite
def replica_states(draw, current: int) -> ReplicaState:
    ready = current if draw(st.booleans()) else draw(st.integers(0, current))
    unschedulable = draw(st.integers(0, current - ready)) if draw(st.integers(0, 4)) == 0 else 0
    return ReplicaState(current=current, ready=ready, unschedulable=unschedulable)


@st.composite
def runs(draw):
    """A spec and a sequence of ticks fed through `decide`, each tick's result feeding the next."""
    spec = draw(specs())
    current = draw(st.integers(spec.min_replicas, spec.max_replicas))
    history, now, ticks = History(), 1_000.0, []
    for _ in range(draw(st.integers(1, 30))):
        now += draw(st.sampled_from([1.0, 15.0, 15.0, 30.0, 120.0]))
        signals = draw(signal_samples(spec))
        state = draw(replica_states(current))
        decision = decide(signals, spec, state, history, now)
        ticks.append((now, signals, state, history, decision))
        history, current = decision.history, decision.desired
    return spec, ticks


def check_always_within_bounds(spec, ticks):
    for _, _, _, _, decision in ticks:
        assert spec.min_replicas <= decision.desired <= spec.max_replicas, decision.reason


def check_never_scales_down_on_missing_stale_or_nan_data(spec, ticks):
    for _, signals, state, _, decision in ticks:
        if state.current > 0 and metrics_unusable(signals, spec):
            assert decision.desired >= state.current, decision.reason
            assert not decision.metrics_available or min(state.ready, state.current) == 0


@PROPERTY_SETTINGS
@given(runs(), st.floats(0, 20_000), st.floats(0, 200))
def test_more_demand_never_fewer_replicas(run, more_tokens, more_queue):
    spec, ticks = run
    for now, signals, state, history, decision in ticks:
        if metrics_unusable(signals, spec):
            continue
        busier = replace(
            signals,
            tokens_per_second=signals.tokens_per_second + more_tokens,
            queue_depth=signals.queue_depth + more_queue,
        )
        assert decide(busier, spec, state, history, now).desired >= decision.desired


def towards_zero(spec, decision, now) -> bool:
    """The decision steps towards zero after the idle window (the rate limit may cut the step)."""
    zero_after = spec.scale_to_zero_after_seconds
    if zero_after is None:
        zero_after = spec.scale_down.stabilization_seconds
    idle_since = decision.history.idle_since
    return spec.min_replicas == 0 and idle_since is not None and now - idle_since >= zero_after


def check_scale_down_respects_rate_and_window(spec, ticks):
    window = spec.scale_down.stabilization_seconds
    first_time = ticks[0][0]
    in_effect: list[tuple[float, int]] = []  # (time, recommendation recorded at that decision)
    for now, _, state, _, decision in ticks:
        in_effect.append((now, decision.history.recommendations[-1].replicas))
        if decision.desired >= state.current:
            continue
        step = max(math.floor(state.current * spec.scale_down.max_step_percent / 100),
                   spec.scale_down.max_step_pods)
        assert decision.desired >= state.current - step, decision.reason
        if decision.limited_by == "scaleToZero" or towards_zero(spec, decision, now):
            continue  # the idle window, not the stabilisation window, governs the steps to zero
        if decision.limited_by in ("maxReplicas", "minReplicas"):
            continue  # bounds after a spec change
        assert now - first_time >= window, decision.reason
        start = now - window
        at_start = [value for time, value in in_effect if time <= start][-1:]
        during = [value for time, value in in_effect if time > start]
        assert max(at_start + during) <= decision.desired, decision.reason


def check_pending_replicas_count_as_capacity(spec, ticks):
    for _, _, state, _, decision in ticks:
        if state.pending == 0 or decision.panic or state.current < max(1, spec.min_replicas):
            continue
        if decision.limited_by == "fallback:metricsUnavailable":
            continue  # the configured fallback count applies whatever is loading
        # Capacity on its way: no more replicas for the demand they are loading to serve.
        assert decision.desired <= state.current, decision.reason


def check_every_decision_is_explained(spec, ticks):
    for _, _, _, _, decision in ticks:
        assert decision.limited_by and decision.reason.endswith(".")
        assert decision.scaling_limited == bool(decision.scaling_limited_reason)


@PROPERTY_SETTINGS
@given(runs())
def test_invariants_over_random_runs(run):
    """One generated run, every invariant: generating runs costs more than checking them."""
    spec, ticks = run
    check_always_within_bounds(spec, ticks)
    check_never_scales_down_on_missing_stale_or_nan_data(spec, ticks)
    check_scale_down_respects_rate_and_window(spec, ticks)
    check_pending_replicas_count_as_capacity(spec, ticks)
    check_every_decision_is_explained(spec, ticks)
