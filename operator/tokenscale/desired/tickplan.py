"""What one autoscaling tick should write for one service (pure).

    plan = plan_tick(TickInput(...))
    plan.status_patch   # a merge patch for /status, or None: nothing material changed
    plan.scale_to       # the Deployment's new replica count, or None
    plan.conditions     # the conditions this tick sets, as (type, status, reason, message)
    plan.events         # the Events to post (a scale event only once the scale succeeded)

The operator observes (watched state + one Prometheus snapshot), decides (`policy.decide`),
plans here, and acts on the plan. Status is written only on a material change: a new decision,
a condition, a replica count, the policy's memory, a signal beyond `signal_band` of the value
last written, or the heartbeat (`heartbeat_seconds` since the last write), so that `sampledAt`
tells how fresh the numbers are without a write per service per tick.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from tokenscale.api import AutoscalingMode, InferenceServiceSpec
from tokenscale.api.models import DecisionRecord, SignalsStatus
from tokenscale.api.wire import rfc3339
from tokenscale.policy.history import history_to_status
from tokenscale.policy.types import Decision, ReplicaState, Signals

from . import conditions
from .pods import PodHealth

METRICS_AVAILABLE = "MetricsAvailable"
SCALING_ACTIVE = "ScalingActive"
SCALING_LIMITED = "ScalingLimited"
DECISIONS_KEPT = 10
# Signals whose movement is news. sampleAgeSeconds moves every tick by nature and is not.
BANDED_SIGNALS = ("tokensPerSecond", "tokensPerSecondLong", "promptTokensPerSecond", "queueDepth",
                  "runningRequests", "kvCacheUsage", "ttftP90Seconds", "activation")
# The policy's memory that must survive a restart; the rest (the queue's last reading, the burst
# window's samples) is rebuilt within a window and is written with the next material change.
DURABLE_MEMORY = ("recommendations", "panicUntil", "idleSince", "lastScaleUp", "lastScaleDown")
WORKLOAD_FIELDS = ("phase", "replicas", "readyReplicas")


class Packed:
    """A status field kept as compressed JSON: the policy's memory and the decision log are a few
    kB of small dicts per service (at 10,000 services ~100 MB as dicts; packed, about a tenth).
    What every tick reads of them is kept aside: the digest of the memory that must survive a
    restart, and the last decision's (toReplicas, limitedBy). The rest is unpacked only to append
    a decision, or on the first decision after a restart."""

    __slots__ = ("data", "digest", "last")

    def __init__(self, value: Any):
        self.data = zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 1)
        self.digest = durable_digest(value) if isinstance(value, dict) else None
        self.last = decision_key(value[-1]) if isinstance(value, list) and value else None

    def value(self) -> Any:
        return json.loads(zlib.decompress(self.data))

    def __eq__(self, other: object) -> bool:
        return self.value() == (other.value() if isinstance(other, Packed) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Packed({self.value()!r})"


def _frozen(value: Any) -> Any:
    """A hashable copy: dicts as sorted item tuples, lists as tuples."""
    if isinstance(value, dict):
        return tuple(sorted((key, _frozen(item)) for key, item in value.items()))
    if isinstance(value, list):
        return tuple([_frozen(item) for item in value])
    return value


def durable_digest(memory: dict[str, Any] | None) -> int:
    """A digest of the policy's memory that must survive a restart: equal memories have equal
    digests (1 and 1.0 included, as a real API server may render either)."""
    return hash(_frozen(_durable(memory)))


def decision_key(record: dict[str, Any]) -> tuple[Any, Any]:
    """What makes a decision news: its replica count and the rule that limited it."""
    return record.get("toReplicas"), record.get("limitedBy")


def unpacked(value: Any) -> Any:
    """The plain value of a status field, packed or not."""
    return value.value() if isinstance(value, Packed) else value


_stamp = functools.lru_cache(maxsize=16)(rfc3339)  # one tick stamps every service with the same time


def parse_rfc3339(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


def condition_reason(rule: str) -> str:
    """A condition reason (CamelCase) from a policy rule name such as hold:metricsUnavailable."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", rule) if w]
    return "".join(w[:1].upper() + w[1:] for w in words) or "Unknown"


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def signals_status(signals: Signals, at: float, heartbeat_seconds: float | None = None) -> dict[str, Any]:
    values = {name: finite(getattr(signals, name)) for name in (
        "tokens_per_second", "tokens_per_second_long", "prompt_tokens_per_second", "queue_depth",
        "running_requests", "kv_cache_usage", "ttft_p90_seconds", "activation", "sample_age_seconds")}
    rounded = {k: (round(v, 3) if v is not None else None) for k, v in values.items()}
    return SignalsStatus(**rounded, sampled_at=_stamp(at), heartbeat_seconds=heartbeat_seconds).model_dump(
        by_alias=True, exclude_none=True, mode="json")


def cost_per_million_tokens(spec: InferenceServiceSpec, replicas: int, tokens_per_second: float | None) -> float | None:
    """GPU cost of the replicas running now, per million generated tokens at the current rate."""
    if spec.cost_per_gpu_hour is None or tokens_per_second is None or not math.isfinite(tokens_per_second):
        return None
    if tokens_per_second <= 0:
        return None
    dollars_per_second = replicas * spec.resources.gpus * spec.cost_per_gpu_hour / 3600.0
    return round(dollars_per_second / tokens_per_second * 1e6, 4)


def moved(old: dict[str, Any] | None, new: dict[str, Any], band: float) -> list[str]:
    """The banded signals that appeared, vanished, or moved beyond `band` (relative) of `old`."""
    old = old or {}
    changed = []
    for key in BANDED_SIGNALS:
        before, after = old.get(key), new.get(key)
        if before is None or after is None:
            if (before is None) != (after is None):
                changed.append(key)
            continue
        if abs(after - before) > band * max(abs(before), abs(after)) + 1e-9:
            changed.append(key)
    return changed


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str
    after_scale: bool = False  # post only once the scale it announces succeeded


@dataclass(frozen=True)
class PlanSettings:
    signal_band: float = 0.1  # relative movement of a signal that is worth a status write
    heartbeat_seconds: float = 60.0  # a write at least this often, so sampledAt tells freshness
    # Ticks start a little after their grid point, so a heartbeat exactly N ticks after the last
    # write may read 19.998 s for 20: due from half a tick before (without it, a tick late).
    slack_seconds: float = 0.0


@dataclass(frozen=True)
class TickInput:
    """Everything one service's tick knows, observed before any write."""

    name: str
    namespace: str
    generation: int | None
    spec: InferenceServiceSpec
    status: dict[str, Any]  # as last observed (autoscaler and decisions may be `Packed`)
    decision: Decision | None  # None: autoscaling disabled (manual mode)
    signals: Signals
    unavailable: str | None  # why the signals could not be read (None: they were)
    no_prometheus: bool  # the operator runs without a Prometheus at all
    replicas: ReplicaState
    pods: PodHealth
    deployment: dict[str, Any] | None  # the serving Deployment as observed (spec.replicas, status)
    endpoint: str
    selector: str
    now: float
    last_write: float | None = None  # when this operator last wrote the signals (None: status says)
    settings: PlanSettings = field(default_factory=PlanSettings)


@dataclass(frozen=True)
class TickPlan:
    status_patch: dict[str, Any] | None
    scale_to: int | None
    conditions: tuple[tuple[str, str, str, str], ...]
    events: tuple[Event, ...]
    why: tuple[str, ...] = ()  # what made the write material (logs, tests, metrics)


def _autoscaling_conditions(tick: TickInput, decision: Decision, acts: bool) -> list[tuple[str, bool, str, str]]:
    unavailable = tick.unavailable
    if unavailable is not None:
        metrics = (False, "NoPrometheus" if tick.no_prometheus else "PrometheusUnavailable", unavailable)
    elif not decision.metrics_available:
        metrics = (False, "MetricsMissing", decision.reason)
    else:
        metrics = (True, "SignalsRead", "signals read from Prometheus")
    found = decision.metrics_available and unavailable is None
    if not acts:
        active = (False, "DryRun", f"DryRun: recommends {decision.desired} replica(s), never acts")
    elif not found:
        active = (False, "MetricsUnavailable", "holding the replica count until metrics return")
    else:
        active = (True, "Active", "scaling on throughput (status.decisions explains each step)")
    if decision.scaling_limited:
        replicas = tick.replicas
        rule = ("podsFailing" if replicas.failing else "unschedulable" if replicas.unschedulable
                else decision.limited_by or "limited")
        limited = (True, condition_reason(rule), decision.scaling_limited_reason or decision.reason)
    else:
        limited = (False, "WithinLimits", "")
    return [(METRICS_AVAILABLE, *metrics), (SCALING_ACTIVE, *active), (SCALING_LIMITED, *limited)]


def _durable(memory: dict[str, Any] | None) -> dict[str, Any]:
    return {key: (memory or {}).get(key) for key in DURABLE_MEMORY}


def plan_tick(tick: TickInput) -> TickPlan:
    status, decision, spec = tick.status, tick.decision, tick.spec
    stamp = _stamp(tick.now)
    generation = tick.generation
    why: list[str] = []
    wanted: dict[str, Any] = {}
    events: list[Event] = []

    # The workload: readiness and pod failures (the reconcile handler computes the same on
    # Deployment events; here pods that cannot start are noticed within a tick).
    workload = conditions.workload_status(tick.deployment, generation=generation, conditions=status.get("conditions"),
                                          endpoint=tick.endpoint, selector=tick.selector, at=stamp, pod_health=tick.pods)
    items = workload["conditions"]
    for key in WORKLOAD_FIELDS:
        wanted[key] = workload[key]
    old_degraded = conditions.get_condition(status.get("conditions"), conditions.DEGRADED) or {}
    if tick.pods.failing and old_degraded.get("reason") != tick.pods.reason:
        events.append(Event("Warning", tick.pods.reason, tick.pods.message))

    scale_to = None
    if decision is None:
        items = conditions.set_condition(items, SCALING_ACTIVE, False, "AutoscalingDisabled",
                                         "autoscaling.enabled is false: spec.replicas is applied (kubectl scale "
                                         "works)", observed_generation=generation, at=stamp)
    else:
        acts = spec.autoscaling.mode == AutoscalingMode.Active
        scaled = acts and decision.changed
        if scaled:
            scale_to = decision.desired
            verb = "ScaledUp" if decision.desired > decision.current else "ScaledDown"
            events.append(Event("Normal", verb, decision.reason, after_scale=True))
            why.append("scale")
        wanted["desiredReplicas"] = decision.desired if acts else decision.current
        wanted["recommendedReplicas"] = decision.desired
        memory = history_to_status(decision.history).model_dump(by_alias=True, mode="json")
        old_memory = status.get("autoscaler")
        old_digest = old_memory.digest if isinstance(old_memory, Packed) else durable_digest(old_memory)
        if durable_digest(memory) != old_digest:
            why.append("memory")
        wanted["autoscaler"] = memory
        cost = cost_per_million_tokens(spec, decision.desired if scaled else decision.current,
                                       finite(tick.signals.tokens_per_second))
        if cost is not None or "costPerMillionTokens" in status:
            wanted["costPerMillionTokens"] = cost  # null removes a stale value
        if scaled:
            wanted["lastScaleTime"] = stamp
        log = status.get("decisions")
        last = log.last if isinstance(log, Packed) else decision_key(log[-1]) if log else None
        if last is None or last != (decision.desired, decision.limited_by) or scaled:
            decisions = list(unpacked(log) or [])
            record = DecisionRecord(time=stamp, from_replicas=decision.current, to_replicas=decision.desired,
                                    recommendations=decision.recommendations, limited_by=decision.limited_by,
                                    reason=decision.reason)
            wanted["decisions"] = (decisions + [record.model_dump(by_alias=True, mode="json")])[-DECISIONS_KEPT:]
            why.append("decision")
        for kind, state, reason, message in _autoscaling_conditions(tick, decision, acts):
            items = conditions.set_condition(items, kind, state, reason, message,
                                             observed_generation=generation, at=stamp)
        if tick.unavailable is None:
            signals = signals_status(tick.signals, tick.now, tick.settings.heartbeat_seconds)
            band = moved(status.get("signals"), signals, tick.settings.signal_band)
            if band:
                why.append("signals:" + ",".join(band))
            last_write = tick.last_write
            if last_write is None:
                last_write = parse_rfc3339((status.get("signals") or {}).get("sampledAt"))
            due = tick.settings.heartbeat_seconds - tick.settings.slack_seconds - 1e-6
            if last_write is None or tick.now - last_write >= due:
                why.append("heartbeat")
            wanted["signals"] = signals

    changed_conditions = tuple(
        (c["type"], c["status"], c.get("reason", ""), c.get("message", "")) for c in items
        if not conditions.condition_is(status.get("conditions"), c["type"], c["status"], c.get("reason", ""),
                                       c.get("message", "")))
    if changed_conditions:
        why.append("conditions:" + ",".join(c[0] for c in changed_conditions))
        wanted["conditions"] = items
    for key in (*WORKLOAD_FIELDS, "desiredReplicas", "recommendedReplicas"):
        if key in wanted and wanted[key] != status.get(key):
            why.append(key)

    patch = None
    if why:
        patch = {key: value for key, value in wanted.items()
                 if key == "signals" or key == "conditions" or status.get(key) != value}
    return TickPlan(status_patch=patch, scale_to=scale_to, conditions=changed_conditions, events=tuple(events),
                    why=tuple(why))
