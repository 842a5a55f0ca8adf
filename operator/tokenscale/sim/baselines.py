"""The baselines, each from its documented algorithm (sources in docs/simulator.md).

- `HorizontalPodAutoscaler`: Kubernetes HPA v2 with an External metric and an AverageValue
  target, default behaviour. `hpa` scales on generated tokens/s; `keda` is KEDA's Prometheus
  scaler on queue depth, which KEDA serves to an HPA of the same kind (KEDA adds nothing to
  the arithmetic above one replica).
- `KnativeKPA`: Knative's pod autoscaler on concurrency, stable and panic windows.
- `StaticReplicas`: provisioned for the peak, never changes.
- `Oracle`: knows the future arrivals and starts replicas instantly: the lower bound.

The arithmetic lives in small pure classes (`HpaAlgorithm`, `KpaAlgorithm`) that the tests
check against the worked examples of the documentation; the autoscaler classes only read
the simulated metrics and call them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# --- Kubernetes HPA -------------------------------------------------------------------------


@dataclass(frozen=True)
class HpaScalingPolicy:
    kind: str  # "Pods" or "Percent"
    value: int
    period_s: float


@dataclass(frozen=True)
class HpaScalingRules:
    stabilization_window_s: float
    policies: tuple[HpaScalingPolicy, ...]
    select_policy: str = "Max"  # Max, Min or Disabled


# autoscaling/v2 defaults (HorizontalPodAutoscalerBehavior documentation)
HPA_DEFAULT_SCALE_UP = HpaScalingRules(
    0.0, (HpaScalingPolicy("Percent", 100, 15.0), HpaScalingPolicy("Pods", 4, 15.0))
)
HPA_DEFAULT_SCALE_DOWN = HpaScalingRules(300.0, (HpaScalingPolicy("Percent", 100, 15.0),))
HPA_SYNC_PERIOD_S = 15.0  # --horizontal-pod-autoscaler-sync-period
HPA_TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance


@dataclass
class HpaAlgorithm:
    """The replica calculation and the behaviour normalisation of the HPA controller."""

    min_replicas: int = 1
    max_replicas: int = 8
    tolerance: float = HPA_TOLERANCE
    scale_up: HpaScalingRules = HPA_DEFAULT_SCALE_UP
    scale_down: HpaScalingRules = HPA_DEFAULT_SCALE_DOWN
    recommendations: list[tuple[float, int]] = field(default_factory=list)  # (time, raw desired)
    scale_events: list[tuple[float, int]] = field(default_factory=list)  # (time, change in replicas)

    @staticmethod
    def external_average_value(total: float, target_per_pod: float, current: int, tolerance: float) -> int:
        """External metric, AverageValue target: the usage ratio is total / (target x current);
        inside the tolerance the count stays, else it becomes ceil(total / target)."""
        usage_ratio = total / (target_per_pod * current) if current else math.inf
        if current and abs(1.0 - usage_ratio) <= tolerance:
            return current
        return math.ceil(total / target_per_pod)

    def stabilise(self, desired: int, current: int, now: float) -> int:
        """The scale-up window keeps the lowest recommendation, the scale-down window the highest;
        the current count is then clamped between them."""
        self.recommendations.append((now, desired))
        up_cut = now - self.scale_up.stabilization_window_s
        down_cut = now - self.scale_down.stabilization_window_s
        up = down = desired
        for when, value in self.recommendations:
            if when > up_cut:
                up = min(up, value)
            if when > down_cut:
                down = max(down, value)
        keep_after = min(up_cut, down_cut)
        self.recommendations = [r for r in self.recommendations if r[0] > keep_after]
        recommendation = max(current, up)
        return min(recommendation, down)

    def _changes_in_period(self, period_s: float, now: float, sign: int) -> int:
        return sum(abs(change) for when, change in self.scale_events if when > now - period_s and change * sign > 0)

    def scale_up_limit(self, current: int, now: float) -> int:
        rules = self.scale_up
        if rules.select_policy == "Disabled":
            return current
        results = []
        for policy in rules.policies:
            added = self._changes_in_period(policy.period_s, now, +1)
            deleted = self._changes_in_period(policy.period_s, now, -1)
            start = current - added + deleted
            if policy.kind == "Pods":
                results.append(start + policy.value)
            else:
                results.append(math.ceil(start * (1 + policy.value / 100)))
        return max(results) if rules.select_policy == "Max" else min(results)

    def scale_down_limit(self, current: int, now: float) -> int:
        rules = self.scale_down
        if rules.select_policy == "Disabled":
            return current
        results = []
        for policy in rules.policies:
            added = self._changes_in_period(policy.period_s, now, +1)
            deleted = self._changes_in_period(policy.period_s, now, -1)
            start = current - added + deleted
            if policy.kind == "Pods":
                results.append(start - policy.value)
            else:
                results.append(int(start * (1 - policy.value / 100)))
        # for scale-down the highest-change policy gives the lowest count
        return min(results) if rules.select_policy == "Max" else max(results)

    def normalise(self, desired: int, current: int, now: float) -> int:
        """Stabilise, then bound by min/max and the rate policies (scale events are remembered)."""
        stabilised = self.stabilise(desired, current, now)
        if stabilised > current:
            result = min(stabilised, self.max_replicas, self.scale_up_limit(current, now))
        elif stabilised < current:
            result = max(stabilised, self.min_replicas, self.scale_down_limit(current, now))
        else:
            result = stabilised
        result = min(max(result, self.min_replicas), self.max_replicas)
        if result != current:
            self.scale_events.append((now, result - current))
            self.scale_events = [e for e in self.scale_events if e[0] > now - 1800]
        return result


class HorizontalPodAutoscaler:
    """HPA on one External metric read from the Prometheus view."""

    instant_startup = False
    wants_concurrency = False
    interval_s = HPA_SYNC_PERIOD_S

    def __init__(self, name: str, metric: str, target_per_pod: float, *, min_replicas=1, max_replicas=64):
        self.name = name
        self.metric = metric  # "tokens_per_second" or "queue_depth"
        self.target_per_pod = target_per_pod
        self.algorithm = HpaAlgorithm(min_replicas=min_replicas, max_replicas=max_replicas)
        self.parameters = {"metric": metric, "target_per_pod": round(target_per_pod, 3)}

    def initial_replicas(self, sim) -> int:
        return min(max(sim.warm_start_replicas(), self.algorithm.min_replicas), self.algorithm.max_replicas)

    def read_metric(self, now: float, sim) -> float | None:
        view = sim.metrics
        if self.metric == "tokens_per_second":
            return view.rate("generated_tokens", now, view.config.short_window_s)
        sample = view.latest(now)
        return None if sample is None else float(sample.waiting)

    def decide(self, now: float, sim) -> int:
        current = sim.desired  # the scale subresource's replicas
        total = self.read_metric(now, sim)
        if total is None or current == 0:  # no metric: the HPA leaves the count alone
            return current
        desired = HpaAlgorithm.external_average_value(total, self.target_per_pod, current, self.algorithm.tolerance)
        return self.algorithm.normalise(desired, current, now)


def hpa(target_tokens_per_s: float, *, max_replicas: int = 64) -> HorizontalPodAutoscaler:
    return HorizontalPodAutoscaler("hpa", "tokens_per_second", target_tokens_per_s, max_replicas=max_replicas)


def keda(queue_threshold: float, *, max_replicas: int = 64) -> HorizontalPodAutoscaler:
    """KEDA's Prometheus scaler (query `sum(vllm:num_requests_waiting)`, metricType AverageValue,
    threshold = the target per pod) drives an HPA with the default behaviour."""
    return HorizontalPodAutoscaler("keda", "queue_depth", queue_threshold, max_replicas=max_replicas)


# --- Knative KPA ----------------------------------------------------------------------------

KPA_STABLE_WINDOW_S = 60.0
KPA_PANIC_WINDOW_PERCENTAGE = 10.0  # panic window = 6 s
KPA_PANIC_THRESHOLD = 2.0  # 200%
KPA_MAX_SCALE_UP_RATE = 1000.0
KPA_MAX_SCALE_DOWN_RATE = 2.0
KPA_TICK_S = 2.0


@dataclass
class KpaAlgorithm:
    """Knative's scaling decision from the windowed concurrency averages."""

    target: float  # concurrency per pod (container-concurrency-target x target utilisation)
    stable_window_s: float = KPA_STABLE_WINDOW_S
    panic_threshold: float = KPA_PANIC_THRESHOLD
    max_scale_up_rate: float = KPA_MAX_SCALE_UP_RATE
    max_scale_down_rate: float = KPA_MAX_SCALE_DOWN_RATE
    panic_time: float | None = None
    max_panic_pods: int = 0

    def scale(self, stable_concurrency: float, panic_concurrency: float, ready_pods: int, now: float) -> int:
        ready = max(1, ready_pods)
        max_up = math.ceil(self.max_scale_up_rate * ready)
        max_down = math.floor(ready / self.max_scale_down_rate)
        stable_pods = min(max(math.ceil(stable_concurrency / self.target), max_down), max_up)
        panic_ratio = panic_concurrency / self.target
        panic_pods = min(max(math.ceil(panic_ratio), max_down), max_up)
        over_panic = panic_ratio / ready >= self.panic_threshold
        if self.panic_time is None and over_panic:
            self.panic_time = now
            self.max_panic_pods = ready_pods
        elif over_panic:
            self.panic_time = now
        elif self.panic_time is not None and now >= self.panic_time + self.stable_window_s:
            self.panic_time = None
            self.max_panic_pods = 0
        if self.panic_time is None:
            return stable_pods
        desired = max(panic_pods, stable_pods)
        self.max_panic_pods = max(self.max_panic_pods, desired)  # no scale-down while panicking
        return self.max_panic_pods


class KnativeKPA:
    instant_startup = False
    wants_concurrency = True
    interval_s = KPA_TICK_S

    def __init__(self, target_concurrency: float, *, min_replicas: int = 1, max_replicas: int = 64):
        self.name = "kpa"
        self.algorithm = KpaAlgorithm(target_concurrency)
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.panic_window_s = KPA_STABLE_WINDOW_S * KPA_PANIC_WINDOW_PERCENTAGE / 100
        self.parameters = {"target_concurrency": round(target_concurrency, 3)}

    def initial_replicas(self, sim) -> int:
        return min(max(sim.warm_start_replicas(), self.min_replicas), self.max_replicas)

    def decide(self, now: float, sim) -> int:
        samples = sim.concurrency  # one per second, scraped from the pods' queue-proxies
        if not samples:
            return sim.desired
        stable = float(np.mean(samples[-int(self.algorithm.stable_window_s):]))
        panic = float(np.mean(samples[-int(self.panic_window_s):]))
        _starting, ready, _draining = sim.replica_counts()
        desired = self.algorithm.scale(stable, panic, ready, now)
        return min(max(desired, self.min_replicas), self.max_replicas)


# --- static and oracle ----------------------------------------------------------------------


class StaticReplicas:
    instant_startup = False
    wants_concurrency = False
    interval_s = 3600.0

    def __init__(self, replicas: int):
        self.name = "static"
        self.replicas = replicas
        self.parameters = {"replicas": replicas}

    def initial_replicas(self, sim) -> int:
        return self.replicas

    def decide(self, now: float, sim) -> int:
        return self.replicas


class Oracle:
    """Sees the future arrivals, and its replicas are ready the moment it asks: the lower bound.

    Each second's arriving work (each request's prefill plus its share of saturated decode
    steps, in replica-seconds) is averaged over `smooth_s` (what a queue can absorb within the
    TTFT target); the oracle provisions the highest such rate over its next `lookahead_s`
    (the requests it admits now keep running for a while) at `utilisation` of each replica.
    No causal autoscaler with a startup delay can beat the oracle at its best utilisation."""

    instant_startup = True
    wants_concurrency = False
    interval_s = 5.0

    def __init__(
        self,
        utilisation: float,
        *,
        lookahead_s: float = 15.0,
        smooth_s: float = 4.0,
        min_replicas: int = 1,
        max_replicas: int = 64,
    ):
        self.name = "oracle"
        self.utilisation = utilisation
        self.lookahead_s = lookahead_s
        self.smooth_s = smooth_s
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.parameters = {"utilisation": round(utilisation, 3), "lookahead_s": lookahead_s, "smooth_s": smooth_s}
        self._smoothed: np.ndarray | None = None

    def _needed(self, sim, start_s: float) -> int:
        if self._smoothed is None:
            work = sim.work_per_second
            kernel = np.ones(int(self.smooth_s)) / int(self.smooth_s)
            self._smoothed = np.convolve(work, kernel, mode="full")[: len(work)]  # trailing average
        lo = int(start_s)
        window = self._smoothed[lo : lo + int(self.lookahead_s) + int(self.smooth_s)]
        peak = float(window.max()) if len(window) else 0.0
        return math.ceil(peak / self.utilisation - 1e-9)

    def initial_replicas(self, sim) -> int:
        return min(max(self._needed(sim, 0.0), self.min_replicas), self.max_replicas)

    def decide(self, now: float, sim) -> int:
        return min(max(self._needed(sim, now), self.min_replicas), self.max_replicas)
