"""The policy's inputs and outputs: plain data, so a trace can be replayed through `decide`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .capacity import CapacityState


@dataclass(frozen=True)
class Signals:
    """One service's canonical signals at one instant, summed over its replicas (None = missing).

    Produced by tokenscale.metrics from Prometheus in a cluster and by tokenscale.sim from
    simulated scrapes; the policy cannot tell the two apart.
    """

    tokens_per_second: float | None = None  # generated tokens/s, short rate window
    tokens_per_second_long: float | None = None  # generated tokens/s, long rate window
    prompt_tokens_per_second: float | None = None
    # generated tokens per finished request (e.g. rate of the generation-length histogram's
    # _sum over its _count); optional: without it the policy estimates the backlog's size
    mean_output_tokens: float | None = None
    queue_depth: float | None = None  # requests waiting, all replicas
    running_requests: float | None = None  # requests in the running batch, all replicas
    kv_cache_usage: float | None = None  # mean over replicas, 0..1
    ttft_p90_seconds: float | None = None
    ttft_p99_seconds: float | None = None  # for SLOs above the 90th percentile (learned capacity)
    activation: float | None = None  # the spec's activation query (demand outside the pods)
    sample_age_seconds: float | None = None  # age of the newest sample
    ready_pods_reporting: int | None = None  # replicas that exported metrics in the window

    def core_missing(self) -> list[str]:
        """Names of the signals the policy cannot decide without (None or NaN)."""
        missing = []
        for name in ("tokens_per_second", "queue_depth"):
            value = getattr(self, name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                missing.append(name)
        return missing


@dataclass(frozen=True)
class ReplicaState:
    """What the cluster says about the serving Deployment right now."""

    current: int  # the Deployment's spec.replicas (what was last asked for)
    ready: int  # ready pods
    unschedulable: int = 0  # pods Pending with reason Unschedulable (e.g. no free GPU)
    # pods that cannot start (CrashLoopBackOff, ImagePullBackOff, OOMKilled, ...): not capacity
    failing: int = 0
    failing_reason: str = ""  # e.g. "CrashLoopBackOff", for the decision's words

    @property
    def pending(self) -> int:
        """Replicas asked for but not ready yet: capacity on its way (model loading)."""
        return max(0, self.current - self.ready - self.unschedulable - self.failing)


@dataclass(frozen=True)
class Recommendation:
    time: float
    replicas: int


@dataclass(frozen=True)
class DemandPoint:
    """A generated tokens/s sample that may become the burst window's low or peak."""

    time: float
    tokens_per_second: float


@dataclass(frozen=True)
class History:
    """The policy's memory between ticks. Lives in the object's status so a restart resumes."""

    recommendations: tuple[Recommendation, ...] = ()
    panic_until: float | None = None
    idle_since: float | None = None
    last_scale_up: float | None = None
    last_scale_down: float | None = None
    last_queue_depth: float | None = None  # the queue at the last decision with usable metrics
    last_queue_time: float | None = None
    # the burst window's candidate lows (rising) or peaks (falling): the first is its low or peak
    demand_extremes: tuple[DemandPoint, ...] = ()
    capacity: CapacityState | None = None  # the capacity learner's memory (capacity.source: Learned)


@dataclass(frozen=True)
class Decision:
    desired: int  # the replica count to apply
    current: int
    recommendations: dict[str, int] = field(default_factory=dict)  # per rule / signal
    limited_by: str = ""  # the rule that set the final value (e.g. "scaleDownStabilization")
    reason: str = ""  # one human sentence
    history: History = field(default_factory=History)  # to store for the next tick
    metrics_available: bool = True
    scaling_limited: bool = False  # bounded by max, unschedulable pods, or a rate limit
    scaling_limited_reason: str = ""
    panic: bool = False
    capacity_per_replica: float | None = None  # tokens/s per replica the demand rules used
    capacity_source: str = "spec"  # "spec" or "learned"

    @property
    def changed(self) -> bool:
        return self.desired != self.current
