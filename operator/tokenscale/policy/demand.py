"""Demand in generated tokens/s, and each demand rule's recommendation (docs/policy.md, rules 5-6)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenscale.api.models import AutoscalingSpec

from .types import History, Signals

KV_CACHE_TARGET = 0.9  # mean KV-cache use above this asks for more replicas
TTFT_MAX_FACTOR = 2.0  # the TTFT rule at most doubles the ready replicas in one decision
DEFAULT_OUTPUT_TOKENS_PER_REQUEST = 256.0  # backlog estimate when nothing better is known
_EPSILON = 1e-9  # float slack so that 3000/1500 is 2 replicas, not 3


def replicas_for(value: float, per_replica: float) -> int:
    """The fewest replicas that hold `value` at `per_replica` each."""
    return max(0, math.ceil(value / per_replica - _EPSILON))


def number(value: float | None) -> float | None:
    """A usable signal value: None for missing, NaN or infinite; negatives read as zero."""
    if value is None or not math.isfinite(value):
        return None
    return max(0.0, float(value))


def tokens_per_second(value: float) -> str:
    return f"{value:,.0f} tok/s"


@dataclass(frozen=True)
class Demand:
    generated: float  # tokens/s generated now (short rate window)
    queue: float  # requests waiting
    tokens_per_request: float  # output tokens a queued request will generate
    growth: float  # tokens/s by which the queue grew since the last decision (negative: draining)
    drain_seconds: float

    @property
    def arrivals(self) -> float:
        """What is generated plus what piles up (never below zero)."""
        return max(0.0, self.generated + self.growth)

    @property
    def backlog(self) -> float:
        """Tokens/s that serve the queued requests within the drain time."""
        return self.queue * self.tokens_per_request / self.drain_seconds

    @property
    def total(self) -> float:
        return self.arrivals + self.backlog

    def explain(self) -> str:
        parts = [f"{tokens_per_second(self.generated)} generated"]
        if abs(self.growth) >= 0.5:
            parts.append(f"{self.growth:+,.0f} tok/s of queue growth")
        if self.queue > 0:
            parts.append(f"{self.queue:g} queued requests drained in {self.drain_seconds:g} s")
        detail = f" ({', '.join(parts)})" if len(parts) > 1 else ""
        return f"demand {tokens_per_second(self.total)}{detail}"


def tokens_per_request(signals: Signals, spec: AutoscalingSpec, generated: float) -> float:
    """Tokens one queued request will generate: measured, else from the running batch, else a constant."""
    measured = number(signals.mean_output_tokens)
    if measured is not None and measured > 0:
        return measured
    running = number(signals.running_requests)
    if running is not None and running >= 1 and generated > 0:
        # A queued request, once admitted, generates at the running batch's per-request rate; over
        # the drain time that is the rate times the drain time.
        return generated / running * spec.backlog_drain_seconds
    return DEFAULT_OUTPUT_TOKENS_PER_REQUEST


def queue_growth(history: History, queue: float, now: float, spec: AutoscalingSpec) -> float:
    """Requests/s by which the queue grew since the last decision (0 without a recent sample)."""
    last, then = history.last_queue_depth, history.last_queue_time
    if last is None or then is None:
        return 0.0
    elapsed = now - then
    if elapsed <= 0 or elapsed > spec.metrics_stale_after_seconds:
        return 0.0
    return (queue - last) / elapsed


def measure(signals: Signals, spec: AutoscalingSpec, history: History, now: float) -> Demand:
    """The demand behind usable core signals (the caller checked they are present and finite)."""
    generated = number(signals.tokens_per_second) or 0.0
    queue = number(signals.queue_depth) or 0.0
    per_request = tokens_per_request(signals, spec, generated)
    # The queue's growth shows demand that the generated rate cannot: it saturates at capacity
    # and lags its rate window at the start of a burst.
    growth = queue_growth(history, queue, now, spec) * per_request
    return Demand(generated, queue, per_request, growth, spec.backlog_drain_seconds)


def recommendations(
    demand: Demand, signals: Signals, spec: AutoscalingSpec, ready: int, serving_soon: int
) -> dict[str, int]:
    """Each demand rule's replica count, in rule order (the first of the highest wins ties)."""
    # The queue rule is a trigger, not a count: one replica's batch of hundreds of sequences
    # drains a queue of hundreds; the tokens rule's backlog term sizes the step.
    queue_target = spec.target_queue_depth_per_replica
    if demand.queue > queue_target * max(serving_soon, 1):
        queue_rule = serving_soon + 1
    else:
        queue_rule = min(serving_soon, replicas_for(demand.queue, queue_target))
    result = {
        "tokens": replicas_for(demand.total, spec.target_tokens_per_second_per_replica),
        "queue": queue_rule,
    }
    kv = number(signals.kv_cache_usage)
    if kv is not None and kv > KV_CACHE_TARGET:
        reporting = signals.ready_pods_reporting or ready
        result["kvCache"] = replicas_for(reporting * kv, KV_CACHE_TARGET)
    ttft = number(signals.ttft_p90_seconds)
    ttft_target = spec.target_time_to_first_token_seconds
    if ttft is not None and ttft_target is not None and ttft > ttft_target:
        result["ttft"] = max(ready + 1, math.ceil(ready * min(ttft / ttft_target, TTFT_MAX_FACTOR)))
    return result
