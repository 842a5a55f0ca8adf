"""The scaling decision: signals x spec x replicas x history -> Decision. Pure and replayable.

The rules run in a fixed order (docs/policy.md lists them with their formulas): replicas at zero,
bounds, a first replica still loading, metrics missing or stale, the demand rules (tokens, queue,
kvCache, ttft; the highest wins), tolerance, cold start, panic, the stabilisation windows, the rate
limits, unschedulable pods. Each step that changes the answer names itself in `limited_by`.
"""

from __future__ import annotations

import dataclasses
import math

from tokenscale.api.models import AutoscalingSpec, MetricsUnavailableAction

from .history import record, trim
from .types import Decision, History, ReplicaState, Signals

KV_CACHE_TARGET = 0.9  # mean KV-cache use above this asks for more replicas
TTFT_MAX_FACTOR = 2.0  # the TTFT rule at most doubles the ready replicas in one decision
DEFAULT_OUTPUT_TOKENS_PER_REQUEST = 256.0  # backlog estimate when nothing better is known
IDLE_TOKENS_PER_SECOND = 1e-6  # below this the service generates nothing
_EPSILON = 1e-9  # float slack so that 3000/1500 is 2 replicas, not 3

# limited_by values that mean "the controller wanted to go further" (condition ScalingLimited)
_LIMITING = {"maxReplicas", "scaleUpRate", "scaleDownRate", "unschedulable"}


def replicas_for(value: float, per_replica: float) -> int:
    """The fewest replicas that hold `value` at `per_replica` each."""
    return max(0, math.ceil(value / per_replica - _EPSILON))


def _number(value: float | None) -> float | None:
    """A usable signal value: None for missing, NaN or infinite; negatives read as zero."""
    if value is None or not math.isfinite(value):
        return None
    return max(0.0, float(value))


def _tps(value: float) -> str:
    return f"{value:,.0f} tok/s"


class _Result:
    """The decision under construction: each step may change `desired` and name itself."""

    def __init__(self, current: int, recommendations: dict[str, int]):
        self.current = current
        self.desired = current
        self.recommendations = recommendations
        self.limited_by = ""
        self.reason = ""

    def set(self, desired: int, limited_by: str, reason: str) -> None:
        self.desired = desired
        self.limited_by = limited_by
        self.reason = reason


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
    result: _Result,
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
    limited = result.limited_by in _LIMITING or replicas.unschedulable > 0
    limited_reason = ""
    if replicas.unschedulable > 0:
        limited_reason = (
            f"{replicas.unschedulable} pod(s) cannot be scheduled (no node with free resources, "
            "e.g. GPUs): no further scale-up until they run"
        )
    elif limited:
        limited_reason = result.reason
    return Decision(
        desired=result.desired,
        current=result.current,
        recommendations=dict(result.recommendations),
        limited_by=result.limited_by,
        reason=result.reason,
        history=new_history,
        metrics_available=metrics_available,
        scaling_limited=limited,
        scaling_limited_reason=limited_reason,
        panic=panic,
    )


def _at_zero(
    signals: Signals, spec: AutoscalingSpec, replicas: ReplicaState, history: History, now: float
) -> Decision:
    """No pod exports metrics at zero: only the activation signal (demand outside) can wake it."""
    history = trim(history, now, spec)
    activation = _number(signals.activation)
    recommendations = {} if activation is None else {"activation": 1 if activation > 0 else 0}
    result = _Result(0, recommendations)
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
    result = _Result(current, {})
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
    result = _Result(current, {})
    if replicas.unschedulable >= current:
        result.set(current, "unschedulable", f"Holding at {current}: no replica can be scheduled yet.")
    else:
        result.set(current, "coldStart", f"Holding at {current}: waiting for the first replica to become "
                   "ready (no pod reports metrics yet).")
    return _finish(result, spec, replicas, history, now, current, panic_until=_panic_carry(history, now))


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
    result = _Result(current, {})
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


def _panic_carry(history: History, now: float) -> float | None:
    if history.panic_until is not None and now < history.panic_until:
        return history.panic_until
    return None


# --- the demand rules -------------------------------------------------------------------------


def _output_tokens_per_request(signals: Signals, spec: AutoscalingSpec, tps: float) -> tuple[float, str]:
    """Tokens one queued request will generate: measured, else from the running batch, else a constant."""
    measured = _number(signals.mean_output_tokens)
    if measured is not None and measured > 0:
        return measured, "measured"
    running = _number(signals.running_requests)
    if running is not None and running >= 1 and tps > 0:
        # A queued request, once admitted, generates at the running batch's per-request rate: its
        # tokens over the drain time are that rate times the drain time.
        return tps / running * spec.backlog_drain_seconds, "per-request rate of the running batch"
    return DEFAULT_OUTPUT_TOKENS_PER_REQUEST, "default estimate"


def _queue_growth(history: History, queue: float, now: float, spec: AutoscalingSpec) -> float:
    """Requests/s by which the queue grew since the last decision (0 without a recent sample)."""
    last, then = history.last_queue_depth, history.last_queue_time
    if last is None or then is None:
        return 0.0
    elapsed = now - then
    if elapsed <= 0 or elapsed > spec.metrics_stale_after_seconds:
        return 0.0
    return (queue - last) / elapsed


def _from_signals(
    signals: Signals, spec: AutoscalingSpec, replicas: ReplicaState, history: History, now: float
) -> Decision:
    history = trim(history, now, spec)
    current = replicas.current
    capacity_per_replica = spec.target_tokens_per_second_per_replica
    tolerance = spec.tolerance
    ready = min(replicas.ready, current)
    pending = replicas.pending
    serving_soon = ready + pending  # capacity now plus capacity on its way

    tps = _number(signals.tokens_per_second) or 0.0
    queue = _number(signals.queue_depth) or 0.0
    per_request, _ = _output_tokens_per_request(signals, spec, tps)
    # Arrivals = what is generated + what piles up: the queue's growth since the last decision
    # shows demand the generated rate (saturated, or lagging its rate window) cannot.
    growth = _queue_growth(history, queue, now, spec) * per_request
    arrival = max(0.0, tps + growth)
    backlog_rate = queue * per_request / spec.backlog_drain_seconds
    demand = arrival + backlog_rate

    # The queue rule asks for one more replica than serve now when the queue exceeds its target
    # per replica: a trigger, not a count (a batch of hundreds of sequences drains a queue of
    # hundreds), the tokens rule's backlog term sizes the step.
    over_queue_target = queue > spec.target_queue_depth_per_replica * max(serving_soon, 1)
    recommendations: dict[str, int] = {
        "tokens": replicas_for(demand, capacity_per_replica),
        "queue": serving_soon + 1 if over_queue_target else min(
            serving_soon, replicas_for(queue, spec.target_queue_depth_per_replica)),
    }
    reporting = signals.ready_pods_reporting if signals.ready_pods_reporting else ready
    kv = _number(signals.kv_cache_usage)
    if kv is not None and kv > KV_CACHE_TARGET:
        recommendations["kvCache"] = replicas_for(reporting * kv, KV_CACHE_TARGET)
    ttft = _number(signals.ttft_p90_seconds)
    ttft_target = spec.target_time_to_first_token_seconds
    if ttft is not None and ttft_target is not None and ttft > ttft_target:
        recommendations["ttft"] = max(ready + 1, math.ceil(ready * min(ttft / ttft_target, TTFT_MAX_FACTOR)))

    result = _Result(current, recommendations)

    # Tolerance and small-count hysteresis on the tokens rule: up only above the band; down only to
    # a count that holds the demand at the band's lower edge, so the new count does not sit at the
    # upper edge and flap back (at 2 -> 1 the load must fit one replica at (1 - tolerance)).
    upper = current * capacity_per_replica * (1 + tolerance)
    lower = current * capacity_per_replica * (1 - tolerance)
    if demand > upper:
        tokens_effective = recommendations["tokens"]
    elif demand >= lower:
        tokens_effective = current
    else:
        tokens_effective = min(current, replicas_for(demand, capacity_per_replica * (1 - tolerance)))
    effective = dict(recommendations, tokens=tokens_effective)
    rule = max(effective, key=lambda name: effective[name])  # first of the highest, in rule order
    proposal = effective[rule]
    held_by_tolerance = proposal == current and recommendations["tokens"] != current and rule == "tokens"

    # Idleness and scale to zero.
    running = _number(signals.running_requests) or 0.0
    activation = _number(signals.activation) or 0.0
    idle = tps <= IDLE_TOKENS_PER_SECOND and queue == 0 and running == 0 and activation == 0
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
    panic_now = demand >= spec.panic_threshold * serving_soon * capacity_per_replica
    cold_capped = False
    if pending > 0 and proposal > current and not panic_now:
        proposal = current
        cold_capped = True

    panic_until = now + spec.scale_down.stabilization_seconds if panic_now else _panic_carry(history, now)
    in_panic = panic_now or panic_until is not None

    parts = [f"{_tps(tps)} generated"]
    if abs(growth) >= 0.5:
        parts.append(f"{growth:+,.0f} tok/s of queue growth")
    if queue > 0:
        parts.append(f"{queue:g} queued requests drained in {spec.backlog_drain_seconds:g} s")
    backlog_note = f" ({', '.join(parts)})" if len(parts) > 1 else ""

    def because(target: int) -> str:
        text = (f"demand {_tps(demand)}{backlog_note} needs {recommendations['tokens']} replica(s) at "
                f"{_tps(capacity_per_replica)} each")
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
                       panic_until=panic_until, idle_since=idle_since, panic=True, queue_depth=queue)

    decision_history = record(history, now, proposal, spec)
    if proposal > current:
        _scale_up(result, spec, replicas, decision_history, now, proposal, wanted, rule, because)
    elif proposal < current:
        partial = signals.ready_pods_reporting is not None and signals.ready_pods_reporting < ready
        _scale_down(result, spec, decision_history, now, proposal, to_zero, partial, rule, because)
    elif cold_capped:
        result.set(current, "coldStart", f"Holding at {current}: {pending} replica(s) still loading count "
                   f"as capacity on its way ({because(wanted)}).")
    elif held_by_tolerance:
        utilisation = demand / (current * capacity_per_replica)
        result.set(current, "tolerance", f"Holding at {current}: utilisation {utilisation:.0%} is within "
                   f"the tolerance band (±{tolerance:.0%}, scale-down only to a count that holds the load "
                   f"at {1 - tolerance:.0%}).")
    elif wanted > spec.max_replicas:
        result.set(current, "maxReplicas", f"Holding at {current}: maxReplicas; {because(wanted)}.")
    elif wanted < floor and not to_zero:
        result.set(current, "minReplicas", f"Holding at {current}: minReplicas; {because(wanted)}.")
    else:
        result.set(current, rule, f"Holding at {current}: {because(proposal)}.")
    return _finish(result, spec, replicas, history, now, proposal, idle_since=idle_since, queue_depth=queue)


def _window(history: History, now: float, seconds: float) -> tuple[list[int], bool]:
    """Recommendations in effect during [now - seconds, now], and whether history covers it all.

    Each recommendation holds from its time until the next one, so the newest one at or before the
    window's start (kept by `trim`) is in effect at the start.
    """
    start = now - seconds
    values = []
    covered = False
    for item in history.recommendations:
        if item.time <= start:
            values = [item.replicas]
            covered = True
        else:
            values.append(item.replicas)
    return values, covered


def _scale_up(result, spec, replicas, history, now, proposal, wanted, rule, because) -> None:
    current = result.current
    rules = spec.scale_up
    values, _ = _window(history, now, rules.stabilization_seconds)
    target = max(current, min([proposal, *values]))
    limit, note = ("maxReplicas", "maxReplicas") if wanted > spec.max_replicas else ("", "")
    if target < proposal:
        limit, note = "scaleUpStabilization", f"the lowest recommendation of the last {rules.stabilization_seconds} s"
    step = max(math.ceil(current * rules.max_step_percent / 100), rules.max_step_pods)
    if target > current + step:
        target = current + step
        limit, note = "scaleUpRate", f"scale-up is limited to {step} pod(s) a step"
    if replicas.unschedulable > 0:
        result.set(current, "unschedulable", f"Holding at {current}: {replicas.unschedulable} pod(s) cannot "
                   f"be scheduled, so more would not help ({because(wanted)}).")
        return
    if target == current:
        result.set(current, limit or "scaleUpStabilization", f"Holding at {current}: {note}; {because(wanted)}.")
        return
    result.set(target, limit or rule, f"Scaling {current} -> {target}: {because(wanted)}"
               + (f"; {note}." if note else "."))


def _scale_down(result, spec, history, now, proposal, to_zero, partial, rule, because) -> None:
    current = result.current
    rules = spec.scale_down
    limit, note = "", ""
    if to_zero:
        target = proposal
        limit, note = "scaleToZero", "idle for the scale-to-zero window"
    else:
        values, covered = _window(history, now, rules.stabilization_seconds)
        if not covered:
            result.set(current, "scaleDownStabilization", f"Holding at {current}: no scale-down before "
                       f"{rules.stabilization_seconds} s of recommendations have been seen ({because(proposal)}).")
            return
        target = min(current, max([proposal, *values]))
        if target > proposal:
            limit, note = "scaleDownStabilization", (f"the highest recommendation of the last "
                                                     f"{rules.stabilization_seconds} s is {target}")
    if target < current and partial:
        result.set(current, "hold:partialMetrics", f"Holding at {current}: not every ready replica reports "
                   "metrics, so the load may be under-counted.")
        return
    step = max(math.floor(current * rules.max_step_percent / 100), rules.max_step_pods)
    if target < current - step:
        target = current - step
        limit, note = "scaleDownRate", f"scale-down is limited to {step} pod(s) a step"
    if target == current:
        result.set(current, limit, f"Holding at {current}: {note}; {because(proposal)}.")
        return
    result.set(target, limit or rule, f"Scaling {current} -> {target}: {because(proposal)}"
               + (f"; {note}." if note else "."))

