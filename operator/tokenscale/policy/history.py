"""The policy's memory: recording recommendations, trimming them, and the round trip to status.

A recommendation holds from its time until the next one (a step function), so a run of equal
values is stored once and the stabilisation windows read the same answer from far fewer entries:
with a 15 s tick and a 300 s window, a steady service keeps one or two entries in its status.
"""

from __future__ import annotations

import dataclasses

from tokenscale.api.models import AutoscalerState, AutoscalingSpec, RecommendationRecord

from .types import History, Recommendation


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
    )
