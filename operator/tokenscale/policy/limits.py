"""The guardrails on a proposal: stabilisation windows and rate limits (docs/policy.md, rules 11-12)."""

from __future__ import annotations

import math
from collections.abc import Callable

from tokenscale.api.models import AutoscalingSpec

from .types import History


class Outcome:
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


def window(history: History, now: float, seconds: float) -> tuple[list[int], bool]:
    """Recommendations in effect during [now - seconds, now], and whether history covers it all.

    Each recommendation holds from its time until the next one, so the newest one at or before the
    window's start (kept by `history.trim`) is in effect at the start.
    """
    start = now - seconds
    values: list[int] = []
    covered = False
    for item in history.recommendations:
        if item.time <= start:
            values = [item.replicas]
            covered = True
        else:
            values.append(item.replicas)
    return values, covered


def scale_up(
    outcome: Outcome,
    spec: AutoscalingSpec,
    unschedulable: int,
    history: History,
    now: float,
    proposal: int,
    wanted: int,
    rule: str,
    because: Callable[[int], str],
) -> None:
    """Up to `proposal` (recorded in `history`), through the scale-up window and rate limit."""
    current = outcome.current
    rules = spec.scale_up
    values, _ = window(history, now, rules.stabilization_seconds)
    target = max(current, min([proposal, *values]))
    limit, note = ("maxReplicas", "maxReplicas") if wanted > spec.max_replicas else ("", "")
    if target < proposal:
        limit = "scaleUpStabilization"
        note = f"the lowest recommendation of the last {rules.stabilization_seconds} s"
    step = max(math.ceil(current * rules.max_step_percent / 100), rules.max_step_pods)
    if target > current + step:
        target = current + step
        limit, note = "scaleUpRate", f"scale-up is limited to {step} pod(s) a step"
    if unschedulable > 0:
        outcome.set(current, "unschedulable", f"Holding at {current}: {unschedulable} pod(s) cannot be "
                    f"scheduled, so more would not help ({because(wanted)}).")
    elif target == current:
        outcome.set(current, limit or "scaleUpStabilization", f"Holding at {current}: {note}; {because(wanted)}.")
    else:
        outcome.set(target, limit or rule, f"Scaling {current} -> {target}: {because(wanted)}"
                    + (f"; {note}." if note else "."))


def scale_down(
    outcome: Outcome,
    spec: AutoscalingSpec,
    history: History,
    now: float,
    proposal: int,
    to_zero: bool,
    partial: bool,
    rule: str,
    because: Callable[[int], str],
) -> None:
    """Down to `proposal` (recorded in `history`), through the scale-down window and rate limit."""
    current = outcome.current
    rules = spec.scale_down
    limit, note = "", ""
    if to_zero:  # the idle window stands in for the stabilisation window
        target = proposal
        limit, note = "scaleToZero", "idle for the scale-to-zero window"
    else:
        values, covered = window(history, now, rules.stabilization_seconds)
        if not covered:
            outcome.set(current, "scaleDownStabilization", f"Holding at {current}: no scale-down before "
                        f"{rules.stabilization_seconds} s of recommendations have been seen ({because(proposal)}).")
            return
        target = min(current, max([proposal, *values]))
        if target > proposal:
            limit = "scaleDownStabilization"
            note = f"the highest recommendation of the last {rules.stabilization_seconds} s is {target}"
    if target < current and partial:
        outcome.set(current, "hold:partialMetrics", f"Holding at {current}: not every ready replica reports "
                    "metrics, so the load may be under-counted.")
        return
    step = max(math.floor(current * rules.max_step_percent / 100), rules.max_step_pods)
    if target < current - step:
        target = current - step
        limit, note = "scaleDownRate", f"scale-down is limited to {step} pod(s) a step"
    if target == current:
        outcome.set(current, limit, f"Holding at {current}: {note}; {because(proposal)}.")
    else:
        outcome.set(target, limit or rule, f"Scaling {current} -> {target}: {because(proposal)}"
                    + (f"; {note}." if note else "."))
