"""What one simulation run measured, per policy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .cluster import DROP_REASON_NAMES
from .profiles import ReplicaProfile


@dataclass(frozen=True)
class RunRecord:
    """What one run leaves for `summarise`: the measured requests (the trace proper, not the
    warm-up replay) with their outcomes, and what the run cost."""

    policy: str
    parameters: dict
    trace: str
    profile: ReplicaProfile
    ttft_target_s: float
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    admitted_at: np.ndarray  # NaN where it never happened
    first_token_at: np.ndarray
    dropped: np.ndarray  # -1 served, else a DROP_* reason
    gpu_seconds: float  # over the trace's own span
    duration_s: float  # that span
    scale_events: list[tuple[float, int, int]]  # (time, from, to)
    timeline: dict[str, np.ndarray]


@dataclass
class SimResult:
    policy: str
    parameters: dict
    trace: str
    profile: str
    requests: int
    served: int
    dropped: int
    dropped_by_reason: dict[str, int]
    gpu_hours: float
    duration_s: float
    mean_replicas: float
    slo_attainment: float  # share of ALL requests (dropped ones miss) with TTFT within the target
    ttft_target_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    ttft_p99_s: float
    queue_wait_mean_s: float
    queue_wait_p99_s: float
    scale_events: int
    reversals: int  # a scale-up followed by a scale-down or the reverse
    generated_tokens: float
    cost_per_million_tokens: float
    gpu_price_per_hour: float
    seeds: int = 1  # cluster seeds pooled into this result (combine)
    worst_seed_attainment: float | None = None  # the lowest of their attainments
    timeline: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self, *, timeline: bool = False) -> dict:
        data = asdict(self)
        data.pop("timeline")
        if timeline:
            data["timeline"] = {k: v.round(3).tolist() for k, v in self.timeline.items()}
        return data


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def count_reversals(events: list[tuple[float, int, int]]) -> int:
    reversals = 0
    previous = 0
    for _time, old, new in events:
        direction = 1 if new > old else -1
        if previous and direction != previous:
            reversals += 1
        previous = direction
    return reversals


def summarise(run: RunRecord) -> SimResult:
    profile, target = run.profile, run.ttft_target_s
    ttft = run.first_token_at - run.arrival_s
    served = run.dropped < 0
    # the SLO allows each request its own prefill on an idle replica: long prompts are not misses
    allowance = target + run.input_tokens / profile.prefill_tokens_per_s
    within = served & (ttft <= allowance)
    wait = (run.admitted_at - run.arrival_s)[served]
    ttft_served = ttft[served]
    reasons = np.bincount(run.dropped[~served], minlength=len(DROP_REASON_NAMES))
    gpu_hours = run.gpu_seconds / 3600.0
    tokens = float(run.output_tokens[served].sum())
    price = profile.gpu_price_per_hour
    return SimResult(
        policy=run.policy,
        parameters=run.parameters,
        trace=run.trace,
        profile=profile.name,
        requests=len(run.arrival_s),
        served=int(served.sum()),
        dropped=int((~served).sum()),
        dropped_by_reason={name: int(n) for name, n in zip(DROP_REASON_NAMES, reasons, strict=True) if n},
        gpu_hours=gpu_hours,
        duration_s=run.duration_s,
        mean_replicas=run.gpu_seconds / profile.gpus_per_replica / run.duration_s if run.duration_s else 0.0,
        slo_attainment=float(within.mean()),
        ttft_target_s=target,
        ttft_p50_s=_percentile(ttft_served, 50),
        ttft_p95_s=_percentile(ttft_served, 95),
        ttft_p99_s=_percentile(ttft_served, 99),
        queue_wait_mean_s=float(wait.mean()) if len(wait) else float("nan"),
        queue_wait_p99_s=_percentile(wait, 99),
        scale_events=len(run.scale_events),
        reversals=count_reversals(run.scale_events),
        generated_tokens=tokens,
        cost_per_million_tokens=gpu_hours * price / (tokens / 1e6) if tokens else float("nan"),
        gpu_price_per_hour=price,
        timeline=run.timeline,
    )


def combine(results: list[SimResult]) -> SimResult:
    """Runs of one setting on several cluster seeds as one result: counts summed (so the attainment
    is that of all their requests together), measures averaged, the first run's timeline."""
    if len(results) == 1:
        return results[0]
    first = results[0]

    def mean(name: str) -> float:
        return float(np.mean([getattr(r, name) for r in results]))

    requests = sum(r.requests for r in results)
    within = sum(r.slo_attainment * r.requests for r in results)
    reasons: dict[str, int] = {}
    for r in results:
        for name, count in r.dropped_by_reason.items():
            reasons[name] = reasons.get(name, 0) + count
    averaged = {
        name: mean(name)
        for name in ("gpu_hours", "duration_s", "mean_replicas", "ttft_p50_s", "ttft_p95_s", "ttft_p99_s",
                     "queue_wait_mean_s", "queue_wait_p99_s", "generated_tokens", "cost_per_million_tokens")
    }
    return replace(
        first,
        requests=requests,
        served=sum(r.served for r in results),
        dropped=sum(r.dropped for r in results),
        dropped_by_reason=reasons,
        slo_attainment=within / requests if requests else 0.0,
        scale_events=round(mean("scale_events")),
        reversals=round(mean("reversals")),
        seeds=len(results),
        worst_seed_attainment=min(r.slo_attainment for r in results),
        **averaged,
    )
