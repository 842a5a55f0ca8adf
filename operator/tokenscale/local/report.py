"""What a run of the local loop measured: its timeline, the summary, and the plot."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokenscale.local.loadgen import PlannedRequest, RequestResult


@dataclass(frozen=True)
class Sample:
    """One second of the run, as the live view and the plot show it."""

    t: float  # seconds since the load started
    offered_rps: float  # planned arrivals per second (recent window)
    offered_tokens_per_second: float  # planned output tokens per second (recent window)
    tokens_per_second: float  # output tokens the clients received per second
    queue_depth: float | None  # sum of the replicas' waiting requests, from Prometheus
    running: float | None  # sum of the replicas' running requests, from Prometheus
    ready: int  # ready replicas
    existing: int  # replica processes, loading or ready (not terminating)
    desired: int  # the Deployment's spec.replicas
    in_flight: int  # requests the clients are waiting on


@dataclass(frozen=True)
class DecisionPoint:
    t: float  # seconds since the load started
    from_replicas: int
    to_replicas: int
    limited_by: str
    reason: str


@dataclass
class RunRecord:
    duration: float
    tick_seconds: float
    scrape_seconds: float
    target_tokens_per_second_per_replica: float
    min_replicas: int
    max_replicas_allowed: int
    plan: Sequence[PlannedRequest]
    results: Sequence[RequestResult] = ()
    samples: list[Sample] = field(default_factory=list)
    decisions: list[DecisionPoint] = field(default_factory=list)
    process_seconds: float = 0.0
    router_retries: int = 0
    replica_restarts: int = 0
    # The schedule's offered output tokens/s as a function of time, where it has one (the built-in
    # ramp); without it the crossing is estimated from the planned arrivals.
    offered_rate: Callable[[float], float | None] | None = None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def capacity_crossing(record: RunRecord, window: float = 2.0, step: float = 0.1) -> float | None:
    """First time the planned output tokens/s exceed the ready replicas' target capacity then.

    A schedule with a rate function (the built-in ramp) is read exactly. Otherwise the planned rate at t is averaged over a window centred on t: unbiased on a ramp (a trailing
    window would report the crossing late, and the reaction short), and on a step it puts the
    crossing a little before the step, so the reaction is never flattered.
    """
    if record.offered_rate is not None:
        t = 0.0
        while t <= record.duration:
            ready = _ready_at(record.samples, t) or record.min_replicas
            if (record.offered_rate(t) or 0.0) > ready * record.target_tokens_per_second_per_replica:
                return round(t, 3)
            t += step
        return None
    arrivals = sorted(record.plan, key=lambda r: r.at)
    if not arrivals:
        return None
    times = [r.at for r in arrivals]
    cumulative = [0]
    for planned in arrivals:
        cumulative.append(cumulative[-1] + planned.output_tokens)
    half = window / 2
    t = 0.0
    end = times[-1] + half
    while t <= end:
        tokens = cumulative[bisect.bisect_left(times, t + half)] - cumulative[bisect.bisect_left(times, t - half)]
        ready = _ready_at(record.samples, t) or record.min_replicas
        if tokens / window > ready * record.target_tokens_per_second_per_replica:
            return round(t, 3)
        t += step
    return None


def _ready_at(samples: Sequence[Sample], t: float) -> int:
    before = [s for s in samples if s.t <= t]
    return before[-1].ready if before else 0


def run_summary(record: RunRecord) -> dict[str, Any]:
    results = list(record.results)
    served = [r for r in results if r.ok]
    rejected = [r for r in results if r.status == 429]
    failed = [r for r in results if not r.ok and r.status != 429]
    ttfts = [r.ttft for r in served if r.ttft is not None]
    desired = [s.desired for s in record.samples if s.desired > 0] or [0]
    ups = [d for d in record.decisions if d.to_replicas > d.from_replicas]
    crossing = capacity_crossing(record)
    first_up = next((d for d in ups if crossing is None or d.t >= crossing - record.tick_seconds), None)
    reaction = (first_up.t - crossing) if (first_up and crossing is not None) else None
    ready_capacity = None
    if first_up is not None and crossing is not None:
        ready_capacity = next(
            (s.t - crossing for s in record.samples if s.t >= first_up.t and s.ready >= first_up.to_replicas),
            None,
        )
    failure_kinds: dict[str, int] = {}
    for r in failed:
        kind = r.error.split(":")[0] or f"HTTP {r.status}"
        failure_kinds[kind] = failure_kinds.get(kind, 0) + 1
    served_tokens = sum(r.output_tokens for r in served)
    return {
        "duration_s": round(record.duration, 1),
        "requests_total": len(results),
        "requests_served": len(served),
        "requests_rejected_429": len(rejected),
        "requests_failed": len(failed),
        "failure_kinds": failure_kinds,
        "tokens_served": served_tokens,
        "ttft_p50_s": _round(percentile(ttfts, 50)),
        "ttft_p99_s": _round(percentile(ttfts, 99)),
        "max_replicas": max(desired),
        "min_replicas": min(desired),
        "final_replicas": record.samples[-1].desired if record.samples else 0,
        "final_ready_replicas": record.samples[-1].ready if record.samples else 0,
        "max_ready_replicas": max((s.ready for s in record.samples), default=0),
        "load_crossed_capacity_at_s": _round(crossing),
        "reaction_seconds": _round(reaction),
        "time_to_ready_capacity_seconds": _round(ready_capacity),
        "replica_process_seconds": round(record.process_seconds, 1),
        "scale_events": [asdict(d) | {"t": round(d.t, 2)} for d in record.decisions if d.to_replicas != d.from_replicas],
        "tick_seconds": record.tick_seconds,
        "scrape_seconds": record.scrape_seconds,
        "target_tokens_per_second_per_replica": record.target_tokens_per_second_per_replica,
        "router_retries": record.router_retries,
        "replica_restarts": record.replica_restarts,
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def plot(record: RunRecord, path: Path, title: str = "tokenscale demo: the local closed loop") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = record.samples
    t = [x.t for x in s]
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True, constrained_layout=True)
    load, tokens, queue, replicas = axes
    load.plot(t, [x.offered_rps for x in s], color="tab:blue", label="offered load (req/s)")
    load.set_ylabel("requests/s")
    load.legend(loc="upper right")
    tokens.plot(t, [x.offered_tokens_per_second for x in s], color="tab:gray", ls="--", label="offered tokens/s")
    tokens.plot(t, [x.tokens_per_second for x in s], color="tab:green", label="served tokens/s")
    capacity = [x.ready * record.target_tokens_per_second_per_replica for x in s]
    tokens.step(t, capacity, where="post", color="tab:red", alpha=0.6, label="ready capacity (target)")
    tokens.set_ylabel("tokens/s")
    tokens.legend(loc="upper right")
    queue.plot(t, [x.queue_depth if x.queue_depth is not None else math.nan for x in s], color="tab:orange",
               label="waiting (Prometheus)")
    queue.plot(t, [x.running if x.running is not None else math.nan for x in s], color="tab:purple",
               alpha=0.6, label="running (Prometheus)")
    queue.set_ylabel("requests")
    queue.legend(loc="upper right")
    replicas.step(t, [x.desired for x in s], where="post", color="black", label="desired")
    replicas.step(t, [x.ready for x in s], where="post", color="tab:green", label="ready")
    for d in record.decisions:
        if d.to_replicas != d.from_replicas:
            for ax in axes:
                ax.axvline(d.t, color="tab:red" if d.to_replicas > d.from_replicas else "tab:blue", alpha=0.25)
    replicas.set_ylabel("replicas")
    replicas.set_xlabel("seconds since the load started")
    replicas.yaxis.get_major_locator().set_params(integer=True)
    replicas.legend(loc="upper right")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
