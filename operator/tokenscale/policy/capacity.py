"""Learned capacity: each service's generated tokens/s per replica at its latency SLO (pure).

With `autoscaling.capacity.source: Learned` the policy does not trust the typed
targetTokensPerSecondPerReplica for ever: it watches what the pods do at the load they carry.

- An observation **near or over the SLO** (TTFT at the SLO's percentile at or above its target
  while requests wait or the KV cache is nearly full, or a queue above its target that still
  grows, or the mean inter-token latency over itlSeconds) bounds the capacity from **above**:
  the throughput per replica seen there is at or above what a replica serves within the SLO.
- An **unsaturated** observation (TTFT under half its target, no queue, KV cache below 90%)
  bounds it from **below**: a replica served that much comfortably.

The estimate is kept inside a bracket: under the upper bound by a margin, and above the lower bound
by a probe (capacity not yet seen violated is explored, a step at a time, so that a target typed
too low is found out); inside the bracket it stays where it is. It moves towards that aim by at most a bounded factor per hour, and
is used only once it is confident (enough observations); until then the spec value decides.
Every bound ages (the prompt mix changes), and missing or NaN signals teach nothing, so they can
never raise the estimate and scale a service down.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from tokenscale.api.models import AutoscalingSpec, CapacitySource

from .demand import KV_CACHE_TARGET, number
from .types import Signals

COMFORT_TTFT_SHARE = 0.5  # TTFT under half its target (with no queue) is an unsaturated observation
UPPER_MARGIN = 0.95  # aim this far under the lowest throughput seen over the SLO
# Decisions use the learned capacity at this share: like a target utilisation, it leaves room for
# the load that arrives while a new replica starts (the spec's target is typed with that in mind).
LEARNED_UTILISATION = 0.9
PROBE = 0.25  # with no overload seen, aim this far above the highest comfortable throughput
MIN_SAMPLES = 12  # informative observations before the estimate is used (3 minutes at a 15 s tick)
BOUND_RELAX_PER_HOUR = 1.1  # an upper bound rises, a lower bound falls, by this factor per hour of age
MAX_STEP_SECONDS = 60.0  # a gap between updates (an outage) grants at most this much movement
MIN_LOAD_SHARE = 0.5  # comfortable load below this share of the capacity in use says nothing new
PROBE_NEAR = 0.85  # comfortable at this share of the capacity in use: probe above it (hysteresis may
# keep a few replicas this far under their target for good)
CAPACITY_FLOOR = 1e-3  # tokens/s: the estimate never reaches zero

# the quantiles the operator reads (one query each for all services), by the SLO percentiles they serve
TTFT_QUANTILE_SIGNALS = ((90.0, "ttft_p90_seconds"), (99.0, "ttft_p99_seconds"))


@dataclass(frozen=True)
class CapacityState:
    """The learner's memory, kept in status.autoscaler.capacity (so a restart resumes it)."""

    estimate: float | None = None  # learned tokens/s per replica at the SLO; None until confident
    lower: float | None = None  # highest comfortable tokens/s per replica seen (aged)
    lower_time: float | None = None
    upper: float | None = None  # lowest tokens/s per replica seen at or over the SLO (aged)
    upper_time: float | None = None
    samples: int = 0  # informative observations so far
    last_moved: float | None = None  # when the estimate last changed
    updated_at: float | None = None  # the last update (the rate bound's clock)
    ready: int | None = None  # ready replicas at the last update
    # When the ready count last fell and rose. A rate over a window from before a fall, divided by
    # today's count, over-states each replica's share: no lower bound from it for a while (an upper
    # bound stays true). After a rise it under-states it: no upper bound from it for a while.
    ready_fell_at: float | None = None
    ready_rose_at: float | None = None
    # What the last readable ticks showed ("upper", "lower" or None) and since when: an observation
    # counts once its kind has held for a rate window, so the rate is the regime's own (a burst's
    # first minute reads the calm before it at 1-minute rates; its end reads the burst).
    regime: str | None = None
    regime_since: float | None = None

    @property
    def confidence(self) -> float:
        return min(1.0, self.samples / MIN_SAMPLES)


@dataclass(frozen=True)
class Capacity:
    """The capacity per replica a decision uses, and where it came from."""

    tokens_per_second: float
    source: str  # "spec" or "learned"
    state: CapacityState | None = None  # None: the spec is configured (source Spec)

    def explain(self) -> str:
        if self.source == "learned" and self.state is not None and self.state.estimate is not None:
            return f"learned: {self.state.estimate:,.0f} tok/s at the SLO, used at {LEARNED_UTILISATION:.0%}"
        if self.state is None:
            return "spec"
        return (f"spec until the learned capacity is confident: {self.state.samples} of {MIN_SAMPLES} "
                "observations")


def learning(spec: AutoscalingSpec) -> bool:
    return spec.capacity is not None and spec.capacity.source == CapacitySource.Learned and spec.slo is not None


def in_use(spec: AutoscalingSpec, state: CapacityState | None) -> Capacity:
    """The capacity per replica to decide with: the learned estimate once confident, else the spec's."""
    typed = spec.target_tokens_per_second_per_replica
    if not learning(spec):
        return Capacity(typed, "spec")
    state = state or CapacityState()
    if state.estimate is not None:
        return Capacity(state.estimate * LEARNED_UTILISATION, "learned", state)
    return Capacity(typed, "spec", state)


def ttft_at_percentile(signals: Signals, percentile: float) -> float | None:
    """The TTFT quantile that covers the SLO's percentile: the smallest read at or above it, else
    the highest (conservative: a p90 SLO judged on p99 would under-rate the capacity, not over)."""
    for quantile, name in TTFT_QUANTILE_SIGNALS:
        if percentile <= quantile:
            return number(getattr(signals, name))
    return number(getattr(signals, TTFT_QUANTILE_SIGNALS[-1][1]))


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def observe(
    state: CapacityState | None,
    signals: Signals,
    spec: AutoscalingSpec,
    *,
    ready: int,
    settle_seconds: float,
    queue_growth: float,
    now: float,
) -> CapacityState:
    """One tick's update. `ready`: ready replicas; `queue_growth`: requests/s the queue grew since the
    last decision; `settle_seconds`: how long after the ready count changed per-replica rates are again
    per replica (the rate window spans the change)."""
    state = state or CapacityState()
    if not learning(spec) or spec.slo is None:
        return state
    if state.ready is not None and ready < state.ready:
        state = dataclasses.replace(state, ready_fell_at=now)
    elif state.ready is not None and ready > state.ready:
        state = dataclasses.replace(state, ready_rose_at=now)
    state = dataclasses.replace(state, ready=ready)
    if not _readable(signals, spec, ready):
        return dataclasses.replace(state, updated_at=now)  # missing or broken data: it neither learns nor moves
    observation = _classify(signals, spec, ready, queue_growth)
    kind = observation[0] if observation else None
    if kind != state.regime or state.regime_since is None:
        state = dataclasses.replace(state, regime=kind, regime_since=now)
    held = now - state.regime_since
    if observation is None or held < (settle_seconds if observation[0] == "lower" else settle_seconds / 2):
        return _move(state, spec, now)
    kind, per_replica = observation
    changed_at = state.ready_fell_at if kind == "lower" else state.ready_rose_at
    if changed_at is not None and now - changed_at < settle_seconds:
        return _move(state, spec, now)
    # both bounds re-anchored at now with their aged values, so ageing never compounds
    lower, upper = _aged_lower(state, now), _aged_upper(state, now)
    lower_time = None if lower is None else now
    upper_time = None if upper is None else now
    # light load is consistent with any capacity above it: it counts only near what is believed
    reference = in_use(spec, state).tokens_per_second
    if upper is not None:
        reference = min(reference, upper)
    if kind == "lower" and per_replica < MIN_LOAD_SHARE * reference:
        return _move(state, spec, now)
    if kind == "lower":
        lower, lower_time = (per_replica if lower is None else max(lower, per_replica)), now
        if upper is not None and lower >= upper:
            upper, upper_time = None, None  # comfortable above an old overload: the old bound is stale
    else:
        upper, upper_time = (per_replica if upper is None else min(upper, per_replica)), now
        if lower is not None and lower >= upper:
            lower, lower_time = None, None
    state = dataclasses.replace(state, lower=lower, lower_time=lower_time, upper=upper, upper_time=upper_time,
                                samples=state.samples + 1)
    near = kind == "lower" and per_replica >= PROBE_NEAR * in_use(spec, state).tokens_per_second
    return _move(state, spec, now, comfortable=near)


def _readable(signals: Signals, spec: AutoscalingSpec, ready: int) -> bool:
    """Every signal the learner reads is there and finite, from every ready pod."""
    assert spec.slo is not None
    values = (signals.tokens_per_second, signals.queue_depth, ttft_at_percentile(signals, spec.slo.percentile))
    if any(value is None or not math.isfinite(value) for value in values) or ready < 1:
        return False
    age = signals.sample_age_seconds
    if age is not None and (not math.isfinite(age) or age > spec.metrics_stale_after_seconds):
        return False
    if signals.ready_pods_reporting is not None and signals.ready_pods_reporting != ready:
        return False  # some pods missing, or draining ones still counted: not a per-replica figure
    # KV None: the engine does not export it; NaN: broken
    return all(value is None or math.isfinite(value) for value in (signals.kv_cache_usage, signals.running_requests))


def _classify(signals: Signals, spec: AutoscalingSpec, ready: int, queue_growth: float) -> tuple[str, float] | None:
    """("upper" | "lower", tokens/s per replica), or None when the (readable) signals teach nothing."""
    slo = spec.slo
    assert slo is not None
    tokens, queue = number(signals.tokens_per_second) or 0.0, number(signals.queue_depth) or 0.0
    ttft = ttft_at_percentile(signals, slo.percentile) or 0.0
    if tokens <= 0:
        return None
    kv = signals.kv_cache_usage
    kv_full = kv is not None and kv > KV_CACHE_TARGET
    running = number(signals.running_requests)
    itl = running / tokens if running is not None and running > 0 else None  # a step gives each sequence a token
    per_replica = tokens / ready
    # A queue that drains means capacity caught up: queues are per pod, so new replicas may idle
    # beside old ones' backlogs, and the mean per replica then says nothing of a saturated one.
    draining = queue_growth < 0
    queue_high = queue > spec.target_queue_depth_per_replica * ready and queue_growth > 0
    over = (ttft >= slo.ttft_seconds and (queue >= 1 or kv_full) and not draining) or queue_high or (
        slo.itl_seconds is not None and itl is not None and itl >= slo.itl_seconds)
    if over:
        return "upper", per_replica
    comfortable = ttft <= COMFORT_TTFT_SHARE * slo.ttft_seconds and queue < max(1.0, 0.5 * ready) and not kv_full
    if slo.itl_seconds is not None:
        comfortable = comfortable and itl is not None and itl <= COMFORT_TTFT_SHARE * slo.itl_seconds
    return ("lower", per_replica) if comfortable else None


def _relax(hours: float) -> float:
    return BOUND_RELAX_PER_HOUR ** max(0.0, hours)


def _aged_upper(state: CapacityState, now: float) -> float | None:
    if state.upper is None or state.upper_time is None:
        return None
    return state.upper * _relax((now - state.upper_time) / 3600)


def _aged_lower(state: CapacityState, now: float) -> float | None:
    if state.lower is None or state.lower_time is None:
        return None
    return state.lower / _relax((now - state.lower_time) / 3600)


def aim(state: CapacityState, now: float, current: float, *, comfortable: bool = False) -> float | None:
    """Where the evidence moves an estimate now at `current`: up to at least the probe above the lower
    bound (above `current` itself while the replicas are comfortable at a load near the capacity in
    use: the policy's hysteresis may keep them from ever reaching the lower bound's probe), down to
    at most the margin under the upper bound (or to the lower bound, when comfort was seen closer to
    the upper bound than the margin); inside that bracket it stays. None: no evidence."""
    lower, upper = _aged_lower(state, now), _aged_upper(state, now)
    if lower is None and upper is None:
        return None
    target = current if lower is None else max(current, lower * (1 + PROBE))
    if comfortable:
        target = max(target, current * (1 + PROBE))
    if upper is not None:
        target = min(target, max(upper * UPPER_MARGIN, lower or 0.0))
    return target


def _move(state: CapacityState, spec: AutoscalingSpec, now: float, *, comfortable: bool = False) -> CapacityState:
    """Move the estimate towards the aim by at most maxChangePerHour (pro rata, gaps capped), once
    confident; before that the estimate is not in use, except downwards under an upper bound: replicas
    seen over the SLO below the spec's target need no more evidence to be given more help."""
    assert spec.capacity is not None
    elapsed = 0.0 if state.updated_at is None else min(max(0.0, now - state.updated_at), MAX_STEP_SECONDS)
    state = dataclasses.replace(state, updated_at=now)
    # the estimate starts where the spec's target left the capacity in use, so that does not jump
    typed = spec.target_tokens_per_second_per_replica / LEARNED_UTILISATION
    current = state.estimate if state.estimate is not None else typed
    target = aim(state, now, current, comfortable=comfortable)
    if target is None or (state.samples < MIN_SAMPLES and (state.upper is None or target >= current)):
        return state
    step = spec.capacity.max_change_per_hour ** (elapsed / 3600)
    moved = min(max(target, current / step), current * step)
    moved = max(CAPACITY_FLOOR, moved)
    if state.estimate is not None and math.isclose(moved, state.estimate, rel_tol=1e-9):
        return state
    return dataclasses.replace(state, estimate=moved, last_moved=now)
