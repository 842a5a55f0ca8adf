"""The policy's memory: recording recommendations, trimming them, and the round trip to status.

A recommendation holds from its time until the next one (a step function), so a run of equal
values is stored once and the stabilisation windows read the same answer from far fewer entries:
with a 15 s tick and a 300 s window, a steady service keeps one or two entries in its status.
"""

from __future__ import annotations

import dataclasses
import math

from tokenscale.api.models import (
    AutoscalerState,
    AutoscalingSpec,
    BurstBaseline,
    DemandSample,
    LearnedCapacity,
    RecommendationRecord,
)

from .capacity import CapacityState
from .types import DemandPoint, History, Recommendation


def longest_window(spec: AutoscalingSpec) -> float:
    return float(max(spec.scale_up.stabilization_seconds, spec.scale_down.stabilization_seconds))


def trim(history: History, now: float, spec: AutoscalingSpec) -> History:
    """Drop recommendations older than the longest window, keeping the one in effect at its start."""
    start = now - longest_window(spec)
    items = history.recommendations
    anchor = None
    for index, item in enumerate(items):
        if item.time <= start:
            anchor = index
    if anchor:
        items = items[anchor:]
    return _replace(history, items)


def record(history: History, now: float, replicas: int, spec: AutoscalingSpec) -> History:
    """Add this decision's recommendation (unless it repeats the last one) and trim."""
    items = history.recommendations
    if not items or items[-1].replicas != replicas:
        items = (*items, Recommendation(time=now, replicas=replicas))
    return trim(_replace(history, items), now, spec)


def _replace(history: History, items: tuple[Recommendation, ...]) -> History:
    return dataclasses.replace(history, recommendations=tuple(items))


def history_from_status(state: AutoscalerState | None) -> History:
    """The policy's history as stored in status.autoscaler (None: a fresh start)."""
    if state is None:
        return History()
    items = sorted(
        (Recommendation(time=float(item.time), replicas=int(item.replicas)) for item in state.recommendations),
        key=lambda item: item.time,
    )
    return History(
        recommendations=tuple(items),
        panic_until=state.panic_until,
        idle_since=state.idle_since,
        last_scale_up=state.last_scale_up,
        last_scale_down=state.last_scale_down,
        last_queue_depth=state.last_queue_depth,
        last_queue_time=state.last_queue_time,
        demand_extremes=tuple(
            DemandPoint(time=float(item.time), tokens_per_second=float(item.tokens_per_second))
            for item in sorted(state.demand_extremes, key=lambda item: item.time)
        ),
        capacity=_capacity_from_status(state.capacity),
    )


def history_to_status(history: History) -> AutoscalerState:
    """The history as status.autoscaler (already trimmed by `decide` to the longest window)."""
    return AutoscalerState(
        recommendations=[
            RecommendationRecord(time=item.time, replicas=item.replicas) for item in history.recommendations
        ],
        panic_until=history.panic_until,
        idle_since=history.idle_since,
        last_scale_up=history.last_scale_up,
        last_scale_down=history.last_scale_down,
        last_queue_depth=history.last_queue_depth,
        last_queue_time=history.last_queue_time,
        demand_extremes=[
            DemandSample(time=item.time, tokens_per_second=item.tokens_per_second)
            for item in history.demand_extremes
        ],
        capacity=_capacity_to_status(history.capacity),
    )


def _capacity_from_status(status: LearnedCapacity | None) -> CapacityState | None:
    if status is None:
        return None
    return CapacityState(
        estimate=status.tokens_per_second_per_replica,
        lower=status.lower_bound,
        lower_time=status.lower_bound_time,
        upper=status.upper_bound,
        upper_time=status.upper_bound_time,
        samples=max(0, int(status.samples)),
        last_moved=status.last_moved,
        updated_at=status.updated_at,
        ready=status.ready,
        ready_fell_at=status.ready_fell_at,
        ready_rose_at=status.ready_rose_at,
        regime=status.regime if status.regime in ("upper", "lower") else None,
        regime_since=status.regime_since,
    )


def _capacity_to_status(state: CapacityState | None) -> LearnedCapacity | None:
    if state is None:
        return None
    return LearnedCapacity(
        tokens_per_second_per_replica=state.estimate,
        samples=state.samples,
        confidence=round(state.confidence, 3),
        last_moved=state.last_moved,
        lower_bound=state.lower,
        lower_bound_time=state.lower_time,
        upper_bound=state.upper,
        upper_bound_time=state.upper_time,
        updated_at=state.updated_at,
        ready=state.ready,
        ready_fell_at=state.ready_fell_at,
        ready_rose_at=state.ready_rose_at,
        regime=state.regime,
        regime_since=state.regime_since,
    )


DEMAND_SLOTS = 32  # the burst window keeps at most one sample per 1/DEMAND_SLOTS of it


def add_demand_sample(history: History, now: float, tokens_per_second: float, spec: AutoscalingSpec) -> History:
    """Add a demand sample to the burst window's candidates: a monotonic queue (each entry lower, for
    Low, or higher, for Peak, than every later one), so its first entry is the window's low or peak
    and it keeps a few entries, not one per tick.

    One entry per slot of 1/DEMAND_SLOTS of the window (slots are fixed in time), so status holds at
    most DEMAND_SLOTS + 1 of them even when demand climbs for a whole day: a sample that the last
    entry of its slot dominates moves that entry's time to its own instead of adding one (the
    entry's value then holds at most one slot longer than it would)."""
    start = now - spec.burst_window_seconds
    peak = spec.burst_baseline == BurstBaseline.Peak
    kept = [
        item for item in history.demand_extremes
        if item.time >= start and (item.tokens_per_second > tokens_per_second if peak
                                   else item.tokens_per_second < tokens_per_second)
    ]
    slot = spec.burst_window_seconds / DEMAND_SLOTS
    if kept and math.floor(kept[-1].time / slot) == math.floor(now / slot):
        kept[-1] = DemandPoint(time=now, tokens_per_second=kept[-1].tokens_per_second)
    else:
        kept.append(DemandPoint(time=now, tokens_per_second=tokens_per_second))
    return dataclasses.replace(history, demand_extremes=tuple(kept))


def baseline_demand(history: History, now: float, spec: AutoscalingSpec) -> float | None:
    """The lowest (Low) or highest (Peak) generated tokens/s sampled in the burst window (None: none)."""
    kept = [item for item in history.demand_extremes if item.time >= now - spec.burst_window_seconds]
    return kept[0].tokens_per_second if kept else None
