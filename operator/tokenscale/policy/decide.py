"""The scaling decision: signals x spec x replicas x history -> Decision. Pure and replayable.

The rules run in a fixed order (docs/policy.md lists them with their formulas): replicas at zero,
bounds, a first replica still loading, metrics missing or stale, the demand rules (tokens, queue,
kvCache, ttft; the highest wins; demand.py), tolerance, scale to zero, cold start, panic, then the
stabilisation windows and rate limits (limits.py). Each step that sets the answer names itself in
`limited_by`.
"""

from __future__ import annotations

import dataclasses
import math

from tokenscale.api.models import AutoscalingSpec, MetricsUnavailableAction

from . import capacity as learner
from . import demand as rules
from .demand import number, replicas_for, tokens_per_second
from .history import add_demand_sample, baseline_demand, record, trim
from .limits import Outcome, scale_down, scale_up
from .types import Decision, History, ReplicaState, Signals

IDLE_TOKENS_PER_SECOND = 1e-6  # below this the service generates nothing

# limited_by values that mean "the controller wanted to go further" (condition ScalingLimited)
_LIMITING = {"maxReplicas", "scaleUpRate", "scaleDownRate", "unschedulable"}

def decide(
    signals: Signals,
    spec: AutoscalingSpec,
    replicas: ReplicaState,
    history: History,
    now: float,
) -> Decision:
    """Decide the replica count for one service at time `now` (seconds; any monotonic epoch)."""
    current = replicas.current
    if current == 0:
        return _at_zero(signals, spec, replicas, history, now)
    if current > spec.max_replicas or current < max(spec.min_replicas, 1):
        return _out_of_bounds(signals, spec, replicas, history, now)
    if min(replicas.ready, current) == 0:
        return _first_replica_loading(spec, replicas, history, now)
    problems = _metrics_problems(signals, spec)
    if problems:
        return _metrics_unavailable(problems, spec, replicas, history, now)
    return _from_signals(signals, spec, replicas, history, now)


# --- the special states -----------------------------------------------------------------------


def _finish(
    result: Outcome,
    spec: AutoscalingSpec,
    replicas: ReplicaState,
    history: History,
    now: float,
    recommended: int,
    *,
    metrics_available: bool = True,
    panic_until: float | None = None,
    idle_since: float | None = None,
    panic: bool = False,
    queue_depth: float | None = None,
) -> Decision:
    """Record this decision's recommendation, stamp scale times, and build the Decision."""
    new_history = dataclasses.replace(
        record(history, now, recommended, spec),
        panic_until=panic_until,
        idle_since=idle_since,
        last_queue_depth=queue_depth,
        last_queue_time=None if queue_depth is None else now,
    )
    if result.desired > result.current:
        new_history = dataclasses.replace(new_history, last_scale_up=now)
    elif result.desired < result.current:
        new_history = dataclasses.replace(new_history, last_scale_down=now)
    used = learner.in_use(spec, new_history.capacity)
    limited = result.limited_by in _LIMITING or replicas.unschedulable > 0 or replicas.failing > 0
    limited_reason = ""
    if replicas.failing > 0:
        limited_reason = _failing_words(replicas)
    elif replicas.unschedulable > 0:
        limited_reason = (
            f"{replicas.unschedulable} pod(s) cannot be scheduled (no node with free resources, "
            "e.g. GPUs): no further scale-up until they run"
        )
    elif limited:
        limited_reason = result.reason
    reason = result.reason
    if replicas.failing > 0 and result.limited_by != "podsFailing":
        reason = f"{reason.rstrip('.')}; {_failing_words(replicas)}."
    return Decision(
        desired=result.desired,
        current=result.current,
        recommendations=dict(result.recommendations),
        limited_by=result.limited_by,
        reason=reason,
        history=new_history,
        metrics_available=metrics_available,
        scaling_limited=limited,
        scaling_limited_reason=limited_reason,
        panic=panic,
        capacity_per_replica=used.tokens_per_second,
        capacity_source=used.source,
    )


def _at_zero(
    signals: Signals, spec: AutoscalingSpec, replicas: ReplicaState, history: History, now: float
) -> Decision:
    """No pod exports metrics at zero: only the activation signal (demand outside) can wake it."""
    history = trim(history, now, spec)
    activation = number(signals.activation)
    recommendations = {} if activation is None else {"activation": 1 if activation > 0 else 0}
    result = Outcome(0, recommendations)
    floor = spec.min_replicas
    available = True
    if floor > 0:
        result.set(floor, "minReplicas", f"Scaling 0 -> {floor}: minReplicas is {floor}.")
    elif activation is None:
        available = False
        result.set(0, "hold:metricsUnavailable", "Holding at 0: the activation signal is missing, so "
                   "waiting demand cannot be seen.")
    elif activation > 0:
        result.set(1, "activation", f"Waking 0 -> 1: the activation signal reads {activation:g} (demand "
                   "waiting outside the pods).")
    else:
        result.set(0, "scaleToZero", "Staying at 0: idle, and the activation signal reads 0.")
    return _finish(result, spec, replicas, history, now, result.desired, metrics_available=available,
                   idle_since=history.idle_since if result.desired == 0 else None)


def _out_of_bounds(
    signals: Signals, spec: AutoscalingSpec, replicas: ReplicaState, history: History, now: float
) -> Decision:
    """The bounds win over everything, missing metrics included: they are the user's explicit limits."""
    history = trim(history, now, spec)
    current = replicas.current
    result = Outcome(current, {})
    if current > spec.max_replicas:
        result.set(spec.max_replicas, "maxReplicas",
                   f"Scaling {current} -> {spec.max_replicas}: maxReplicas is {spec.max_replicas}.")
    else:
        floor = max(spec.min_replicas, 1)
        result.set(floor, "minReplicas", f"Scaling {current} -> {floor}: minReplicas is {spec.min_replicas}.")
    available = not _metrics_problems(signals, spec) or min(replicas.ready, current) == 0
    return _finish(result, spec, replicas, history, now, result.desired, metrics_available=available,
                   panic_until=_panic_carry(history, now))


def _first_replica_loading(
    spec: AutoscalingSpec, replicas: ReplicaState, history: History, now: float
) -> Decision:
    """Replicas exist but none is ready: no pod reports yet (normal), the pending ones are the capacity."""
    history = trim(history, now, spec)
    current = replicas.current
    result = Outcome(current, {})
    if replicas.failing > 0 and replicas.pending == 0:
        result.set(current, "podsFailing", f"Holding at {current}: {_failing_words(replicas)}; "
                   "more replicas would fail the same way.")
    elif replicas.unschedulable >= current:
        result.set(current, "unschedulable", f"Holding at {current}: no replica can be scheduled yet.")
    else:
        result.set(current, "coldStart", f"Holding at {current}: waiting for the first replica to become "
                   "ready (no pod reports metrics yet).")
    return _finish(result, spec, replicas, history, now, current, panic_until=_panic_carry(history, now))


def _failing_words(replicas: ReplicaState) -> str:
    state = replicas.failing_reason or "failing"
    return f"{replicas.failing} pod(s) cannot start ({state}) and are not counted as capacity on its way"


def _metrics_problems(signals: Signals, spec: AutoscalingSpec) -> list[str]:
    problems = [f"{name} is missing" for name in signals.core_missing()]
    for name in ("tokens_per_second", "queue_depth"):
        value = getattr(signals, name)
        if value is not None and math.isinf(value):
            problems.append(f"{name} is infinite")
    age = signals.sample_age_seconds
    if age is not None and (math.isnan(age) or age > spec.metrics_stale_after_seconds):
        problems.append(f"the newest sample is {age:g} s old (stale after {spec.metrics_stale_after_seconds} s)")
    return problems


def _metrics_unavailable(
    problems: list[str], spec: AutoscalingSpec, replicas: ReplicaState, history: History, now: float
) -> Decision:
    """Never read missing data as zero: hold, or go up to the fallback; never down."""
    history = trim(history, now, spec)
    current = replicas.current
    result = Outcome(current, {})
    why = "; ".join(problems)
    fallback = spec.fallback_replicas
    if spec.on_metrics_unavailable == MetricsUnavailableAction.ScaleTo and fallback is not None:
        target = min(max(current, fallback), spec.max_replicas)
        verb = "Scaling" if target != current else "Holding at"
        arrow = f" {current} -> {target}" if target != current else f" {current}"
        result.set(target, "fallback:metricsUnavailable",
                   f"{verb}{arrow}: metrics unavailable ({why}); fallbackReplicas is {fallback}, "
                   "never below the current count.")
    else:
        result.set(current, "hold:metricsUnavailable", f"Holding at {current}: metrics unavailable ({why}).")
    # The hold is recorded as a recommendation, so that after an outage the scale-down
    # window starts afresh instead of acting on the first sample back.
    return _finish(result, spec, replicas, history, now, result.desired, metrics_available=False,
                   panic_until=_panic_carry(history, now))


def rising(signals: Signals) -> bool:
    """The load is rising: the short-window generated rate is above the long-window one."""
    short, long = number(signals.tokens_per_second), number(signals.tokens_per_second_long)
    return short is not None and long is not None and short > long


def _panic_carry(history: History, now: float) -> float | None:
    if history.panic_until is not None and now < history.panic_until:
        return history.panic_until
    return None


# --- deciding from the signals ---------------------------------------------------------------


def _from_signals(
    signals: Signals, spec: AutoscalingSpec, replicas: ReplicaState, history: History, now: float
) -> Decision:
    history = trim(history, now, spec)
    current = replicas.current
    ready = min(replicas.ready, current)
    if learner.learning(spec):
        # The learner sees this tick's signals first; every rule below then sizes by the capacity in
        # use (the learned estimate once confident, else the spec's target).
        growth = rules.queue_growth(history, number(signals.queue_depth) or 0.0, now, spec)
        history = dataclasses.replace(history, capacity=learner.observe(
            history.capacity, signals, spec, ready=ready, settle_seconds=spec.metrics_stale_after_seconds,
            queue_growth=growth, now=now))
    used = learner.in_use(spec, history.capacity)
    if used.tokens_per_second != spec.target_tokens_per_second_per_replica:
        spec = spec.model_copy(update={"target_tokens_per_second_per_replica": used.tokens_per_second})
    capacity_per_replica = spec.target_tokens_per_second_per_replica
    capacity_note = f" ({used.explain()})" if learner.learning(spec) else ""
    tolerance = spec.tolerance
    pending = replicas.pending
    serving_soon = ready + pending  # capacity now plus capacity on its way

    demand = rules.measure(signals, spec, history, now)
    recommendations = rules.recommendations(demand, signals, spec, ready, serving_soon)
    if spec.holds_burst_headroom:
        history = add_demand_sample(history, now, demand.generated, spec)
        baseline = baseline_demand(history, now, spec) or 0.0
        # The baseline wanders with the traffic's noise; within the tolerance band of the current
        # capacity the count stays, so the ceiling does not flip it (each flip up would be held
        # for the scale-down window).
        held = spec.burst_headroom * baseline
        serving = current * capacity_per_replica
        if serving * (1 - tolerance) <= held <= serving * (1 + tolerance):
            recommendations["headroom"] = current
        else:
            recommendations["headroom"] = replicas_for(held, capacity_per_replica)
    result = Outcome(current, recommendations)

    # Tolerance and small-count hysteresis on the tokens rule: up only above the band; down only to
    # a count that holds the demand at the band's lower edge, so the new count does not sit at the
    # upper edge and flap back (at 2 -> 1 the load must fit one replica at (1 - tolerance)).
    # The band's upper half is there against noise; while the short rate is above the long one the
    # load is rising, and waiting for +tolerance would cost a replica's startup on a ramp.
    upper = current * capacity_per_replica * (1 if rising(signals) else 1 + tolerance)
    lower = current * capacity_per_replica * (1 - tolerance)
    # With burst headroom, a burst inside it orders nothing unless the pods show overload (requests
    # waiting, or the KV cache full): the headroom is what serves it, and replicas ordered now would
    # arrive after it and stay for the scale-down window. Panic (below) still acts on big bursts.
    within_headroom = "headroom" in recommendations and demand.queue < 1 and (
        (number(signals.kv_cache_usage) or 0.0) <= rules.KV_CACHE_TARGET
    )
    held_by_headroom = demand.total > upper and within_headroom
    if held_by_headroom:
        tokens_effective = current
    elif demand.total > upper:
        tokens_effective = recommendations["tokens"]
    elif demand.total >= lower:
        tokens_effective = current
    else:
        tokens_effective = min(current, replicas_for(demand.total, capacity_per_replica * (1 - tolerance)))
    effective = dict(recommendations, tokens=tokens_effective)
    rule = max(effective, key=lambda name: effective[name])  # first of the highest, in rule order
    proposal = effective[rule]
    held_by_tolerance = proposal == current and recommendations["tokens"] != current and rule == "tokens"

    # Idleness and scale to zero.
    running = number(signals.running_requests) or 0.0
    activation = number(signals.activation) or 0.0
    idle = demand.generated <= IDLE_TOKENS_PER_SECOND and demand.queue == 0 and running == 0 and activation == 0
    idle_since = (history.idle_since if history.idle_since is not None else now) if idle else None
    zero_after = spec.scale_to_zero_after_seconds
    if zero_after is None:
        zero_after = spec.scale_down.stabilization_seconds
    to_zero = spec.min_replicas == 0 and idle and idle_since is not None and now - idle_since >= zero_after
    floor = 0 if to_zero else max(spec.min_replicas, 1)

    wanted = proposal  # before bounds, to tell when maxReplicas limits
    proposal = min(max(proposal, floor), spec.max_replicas)

    # Cold start: pending replicas are capacity on its way; the queue that builds while they load
    # is what they are for, so it asks for no more (panic, below, still can).
    panic_now = demand.total >= spec.panic_threshold * serving_soon * capacity_per_replica
    cold_capped = False
    if pending > 0 and proposal > current and not panic_now:
        proposal = current
        cold_capped = True

    panic_until = now + spec.scale_down.stabilization_seconds if panic_now else _panic_carry(history, now)
    in_panic = panic_now or panic_until is not None

    def because(target: int) -> str:
        text = (f"{demand.explain()} needs {recommendations['tokens']} replica(s) at "
                f"{tokens_per_second(capacity_per_replica)} each{capacity_note}")
        return text if rule == "tokens" and target == recommendations["tokens"] else f"{text}; {rule} asks for {target}"

    if in_panic:
        target = max(current, proposal)
        if target > current and replicas.unschedulable > 0:
            result.set(current, "unschedulable", f"Holding at {current} in panic mode: "
                       f"{replicas.unschedulable} pod(s) cannot be scheduled.")
        elif target > current:
            limit = "maxReplicas" if wanted > spec.max_replicas and target == spec.max_replicas else "panic"
            result.set(target, limit, f"Panic: scaling {current} -> {target} at once; {because(wanted)}.")
        elif wanted > spec.max_replicas and current == spec.max_replicas:
            result.set(current, "maxReplicas", f"Holding at {current} in panic mode: maxReplicas; {because(wanted)}.")
        else:
            result.set(current, "panic", f"Holding at {current}: panic mode (demand reached "
                       f"{spec.panic_threshold:g}x ready capacity) allows no scale-down until it ends.")
        return _finish(result, spec, replicas, history, now, proposal,
                       panic_until=panic_until, idle_since=idle_since, panic=True, queue_depth=demand.queue)

    decision_history = record(history, now, proposal, spec)
    if proposal > current:
        scale_up(result, spec, replicas.unschedulable, decision_history, now, proposal, wanted, rule, because)
    elif proposal < current:
        partial = signals.ready_pods_reporting is not None and signals.ready_pods_reporting < ready
        scale_down(result, spec, decision_history, now, proposal, to_zero, partial, rule, because)
    elif cold_capped:
        result.set(current, "coldStart", f"Holding at {current}: {pending} replica(s) still loading count "
                   f"as capacity on its way ({because(wanted)}).")
    elif held_by_headroom and rule == "tokens":
        result.set(current, "headroom", f"Holding at {current}: the burst is within the burst headroom and "
                   f"the pods show no overload (no queue, KV cache at most {rules.KV_CACHE_TARGET:.0%}); "
                   f"{because(wanted)}.")
    elif held_by_tolerance:
        utilisation = demand.total / (current * capacity_per_replica)
        result.set(current, "tolerance", f"Holding at {current}: utilisation {utilisation:.0%} is within "
                   f"the tolerance band (±{tolerance:.0%}, scale-down only to a count that holds the load "
                   f"at {1 - tolerance:.0%}).")
    elif wanted > spec.max_replicas:
        result.set(current, "maxReplicas", f"Holding at {current}: maxReplicas; {because(wanted)}.")
    elif wanted < floor and not to_zero:
        result.set(current, "minReplicas", f"Holding at {current}: minReplicas; {because(wanted)}.")
    else:
        result.set(current, rule, f"Holding at {current}: {because(proposal)}.")
    return _finish(result, spec, replicas, history, now, proposal, idle_since=idle_since, queue_depth=demand.queue)

