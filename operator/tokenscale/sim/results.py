"""What one simulation run measured, per policy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from .cluster import DROP_REASON_NAMES

if TYPE_CHECKING:
    from .simulator import Autoscaler, Simulation


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


def summarise(sim: Simulation, autoscaler: Autoscaler, gpu_seconds: float, end_s: float, timeline) -> SimResult:
    cluster, profile, workload = sim.cluster, sim.profile, sim.workload
    log = cluster.log
    target = sim.config.ttft_target_s if sim.config.ttft_target_s is not None else profile.ttft_target_s
    measured = sim.measured  # requests of the trace proper, not of the warm-up replay
    arrival = workload.arrival_s[measured]
    ttft = log.first_token_at[measured] - arrival
    dropped_reason = log.dropped[measured]
    served = dropped_reason < 0
    # the SLO allows each request its own prefill on an idle replica: long prompts are not misses
    allowance = target + workload.input_tokens[measured] / profile.prefill_tokens_per_s
    within = served & (ttft <= allowance)
    wait = (log.admitted_at[measured] - arrival)[served]
    ttft_served = ttft[served]
    reasons = np.bincount(dropped_reason[~served], minlength=len(DROP_REASON_NAMES))
    gpu_hours = gpu_seconds / 3600.0
    tokens = float(workload.output_tokens[measured][served].sum())
    price = profile.gpu_price_per_hour
    return SimResult(
        policy=autoscaler.name,
        parameters=dict(getattr(autoscaler, "parameters", {})),
        trace=workload.name,
        profile=profile.name,
        requests=int(measured.sum()),
        served=int(served.sum()),
        dropped=int((~served).sum()),
        dropped_by_reason={name: int(n) for name, n in zip(DROP_REASON_NAMES, reasons, strict=True) if n},
        gpu_hours=gpu_hours,
        duration_s=end_s,
        mean_replicas=gpu_seconds / profile.gpus_per_replica / end_s if end_s else 0.0,
        slo_attainment=float(within.mean()),
        ttft_target_s=target,
        ttft_p50_s=_percentile(ttft_served, 50),
        ttft_p95_s=_percentile(ttft_served, 95),
        ttft_p99_s=_percentile(ttft_served, 99),
        queue_wait_mean_s=float(wait.mean()) if len(wait) else float("nan"),
        queue_wait_p99_s=_percentile(wait, 99),
        scale_events=len(sim.scale_events),
        reversals=count_reversals(sim.scale_events),
        generated_tokens=tokens,
        cost_per_million_tokens=gpu_hours * price / (tokens / 1e6) if tokens else float("nan"),
        gpu_price_per_hour=price,
        timeline=timeline,
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
