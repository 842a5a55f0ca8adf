"""Autoscalers the simulator can run: tokenscale's own policy and the baselines, by name.

`TokenscalePolicy` calls `tokenscale.policy.decide` itself (not a copy), with the signals built
from the simulated Prometheus exactly as tokenscale.metrics builds them from a real one, the
replica state as the Deployment reports it, and the history it stored last tick.
"""

from __future__ import annotations

import dataclasses
import math

from tokenscale.api import AutoscalingSpec
from tokenscale.metrics.promql import TTFT_QUANTILE, TTFT_SLO_QUANTILE
from tokenscale.policy import decide
from tokenscale.policy.types import History, ReplicaState, Signals
from tokenscale.settings import DEFAULT_TICK_SECONDS

from .baselines import HorizontalPodAutoscaler, KnativeKPA, Oracle, StaticReplicas, hpa, keda

TOKENSCALE_TICK_S = DEFAULT_TICK_SECONDS  # the operator's default --tick-seconds
_SIGNAL_FIELDS = {f.name for f in dataclasses.fields(Signals)}


def signals_from(view, now: float) -> Signals:
    """The canonical signals as the operator's Prometheus queries would return them at `now`."""
    config = view.config
    sample = view.latest(now)
    if sample is None:
        return Signals()
    values = {
        "tokens_per_second": view.rate("generated_tokens", now, config.short_window_s),
        "tokens_per_second_long": view.rate("generated_tokens", now, config.long_window_s),
        "prompt_tokens_per_second": view.rate("prompt_tokens", now, config.short_window_s),
        "queue_depth": float(sample.waiting),
        "running_requests": float(sample.running),
        "kv_cache_usage": sample.kv_usage,
        "ttft_p90_seconds": view.ttft_quantile(now, config.short_window_s, TTFT_QUANTILE),
        "ttft_p99_seconds": view.ttft_quantile(now, config.short_window_s, TTFT_SLO_QUANTILE),
        "sample_age_seconds": now - sample.time,
        "ready_pods_reporting": sample.pods_reporting,
    }
    finished = view.rate("finished_requests", now, config.long_window_s)
    if finished:
        tokens = view.rate("finished_output_tokens", now, config.long_window_s)
        values["mean_output_tokens"] = tokens / finished if tokens is not None else None
    return Signals(**{k: v for k, v in values.items() if k in _SIGNAL_FIELDS})


class TokenscalePolicy:
    instant_startup = False
    wants_concurrency = False

    def __init__(self, spec: AutoscalingSpec, *, tick_s: float = TOKENSCALE_TICK_S):
        self.name = "tokenscale"
        self.spec = spec
        self.interval_s = tick_s
        self.history = History()
        self.decisions: list = []  # every Decision, for --explain style output
        self._decide = decide
        self.parameters = {
            "target_tokens_per_second_per_replica": round(spec.target_tokens_per_second_per_replica, 3),
            "target_queue_depth_per_replica": spec.target_queue_depth_per_replica,
        }
        if spec.holds_burst_headroom:
            self.parameters["burst_headroom"] = round(spec.burst_headroom, 3)
            self.parameters["burst_baseline"] = str(spec.burst_baseline)
        if spec.capacity is not None and spec.capacity.source == "Learned":
            self.parameters["capacity_source"] = "Learned"
        self.capacity_trace: list[tuple[float, float, str]] = []  # (time, capacity used, spec|learned)

    def initial_replicas(self, sim) -> int:
        return min(max(sim.warm_start_replicas(), self.spec.min_replicas, 1), self.spec.max_replicas)

    def decide(self, now: float, sim) -> int:
        starting, ready, _draining = sim.replica_counts()
        replicas = ReplicaState(current=sim.desired, ready=ready)
        decision = self._decide(signals_from(sim.metrics, now), self.spec, replicas, self.history, now)
        self.history = decision.history
        if decision.changed:
            self.decisions.append((now, decision))
        if decision.capacity_per_replica is not None and "capacity_source" in self.parameters:
            self.capacity_trace.append((now, decision.capacity_per_replica, decision.capacity_source))
            self.parameters["learned_tokens_per_second_per_replica"] = round(decision.capacity_per_replica, 1)
        return decision.desired


POLICY_NAMES = ("hpa", "keda", "kpa", "static", "oracle", "tokenscale")
BASELINE_NAMES = ("hpa", "keda", "kpa", "static")


def make_autoscaler(name: str, target: float, spec: AutoscalingSpec, **options):
    """One autoscaler with its main target set to `target`; bounds from the spec.

    hpa: generated tokens/s per pod; keda: queued requests per pod; kpa: concurrency per pod;
    static: replicas; oracle: utilisation 0..1; tokenscale: targetTokensPerSecondPerReplica."""
    low, high = max(spec.min_replicas, 1), spec.max_replicas
    if name == "hpa":
        scaler: object = hpa(target, max_replicas=high)
    elif name == "keda":
        scaler = keda(target, max_replicas=high)
    elif name == "kpa":
        scaler = KnativeKPA(target, min_replicas=low, max_replicas=high)
    elif name == "static":
        scaler = StaticReplicas(int(math.ceil(target)))
    elif name == "oracle":
        scaler = Oracle(target, min_replicas=low, max_replicas=high, **options)
    elif name == "tokenscale" and "headroom_at" in options:  # target: burstHeadroom
        update = {"target_tokens_per_second_per_replica": options["headroom_at"], "burst_headroom": max(1.0, target),
                  "burst_baseline": options.get("baseline", "Low")}
        scaler = TokenscalePolicy(spec.model_copy(update=update))
    elif name == "tokenscale":
        scaler = TokenscalePolicy(spec.model_copy(update={"target_tokens_per_second_per_replica": target}))
    else:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
    if isinstance(scaler, HorizontalPodAutoscaler):
        scaler.algorithm.min_replicas = low
    return scaler
