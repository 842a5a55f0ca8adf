"""Scale to zero with the activator, in the simulator: held requests, the immediate wake-up.

`ActivatorCluster` holds a request that finds no ready replica (in arrival order, at most
`max_held`, for at most `hold_timeout_s`; past either it is dropped as the activator's 503) and
routes the held ones as soon as a replica is ready: their TTFT includes the wait. The
`ActivatorPolicy` runs `tokenscale.policy.decide` at its tick with the activation signal the
operator derives from the activator's wake-up annotation (`desired.routing.with_activation`: 1
while a request was held in the last 30 s, else 0), and between ticks scales 0 -> 1 the moment a request is held, as the
operator's handler does. `compare` sets it against keeping one replica on the same trace.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import numpy as np

from tokenscale.api import AutoscalingSpec
from tokenscale.desired.routing import with_activation
from tokenscale.policy.types import ReplicaState

from .autoscalers import TokenscalePolicy, signals_from
from .cluster import DROP_HOLD_FULL, DROP_HOLD_TIMEOUT, READY, Cluster
from .profiles import ReplicaProfile
from .results import SimResult, combine
from .simulator import SimConfig, Simulation
from .workload import Workload


class ActivatorCluster(Cluster):
    def __init__(self, workload: Workload, profile: ReplicaProfile, *, max_held: int = 100,
                 hold_timeout_s: float = 600.0, **options) -> None:
        super().__init__(workload, profile, **options)
        self.max_held = max_held
        self.hold_timeout_s = hold_timeout_s
        self.held: deque[int] = deque()
        self.was_held = [False] * len(workload)
        self.last_held_at = -math.inf
        self.held_max = 0

    def _ready(self) -> bool:
        return any(replica.state == READY for replica in self.live)

    def route(self, request: int, now: float) -> None:
        if self._ready():
            self._release(now)
            super().route(request, now)
            return
        if len(self.held) >= self.max_held:
            self.drop(request, DROP_HOLD_FULL)
            return
        self.held.append(request)
        self.was_held[request] = True
        self.last_held_at = now
        self.held_max = max(self.held_max, len(self.held))

    def promote_ready(self, now: float) -> None:
        super().promote_ready(now)
        arrival = self.arrival
        while self.held and now - arrival[self.held[0]] > self.hold_timeout_s:
            self.drop(self.held.popleft(), DROP_HOLD_TIMEOUT)
        if self.held and self._ready():
            self._release(now)

    def _release(self, now: float) -> None:
        while self.held:
            Cluster.route(self, self.held.popleft(), now)


class ActivatorSimulation(Simulation):
    def __init__(self, workload: Workload, profile: ReplicaProfile, config: SimConfig = SimConfig(), *,
                 max_held: int = 100, hold_timeout_s: float = 600.0) -> None:
        super().__init__(workload, profile, config)
        self.cluster = ActivatorCluster(self.workload, profile, seed=config.seed,
                                        on_first_token=self.metrics.observe_ttft, max_held=max_held,
                                        hold_timeout_s=hold_timeout_s)


class ActivatorPolicy(TokenscalePolicy):
    """tokenscale's policy with the activator: minReplicas 0, woken at once by a held request."""

    def __init__(self, spec: AutoscalingSpec, *, tick_s: float = 15.0, wake_check_s: float = 0.5) -> None:
        super().__init__(spec, tick_s=tick_s)
        self.name = "tokenscale+activator"
        self.tick_s = tick_s
        self.interval_s = wake_check_s
        self._next_tick = 0.0

    def decide(self, now: float, sim) -> int:
        cluster = sim.cluster
        if sim.desired == 0 and cluster.held:
            return 1  # the wake-up: the operator's handler, not the next tick
        if now < self._next_tick:
            return sim.desired
        self._next_tick = now + self.tick_s
        _starting, ready, _draining = sim.replica_counts()
        requested_at = cluster.last_held_at if math.isfinite(cluster.last_held_at) else None
        signals = with_activation(signals_from(sim.metrics, now), self.spec, requested_at, now)
        decision = self._decide(signals, self.spec, ReplicaState(current=sim.desired, ready=ready), self.history, now)
        self.history = decision.history
        if decision.changed:
            self.decisions.append((now, decision))
        return decision.desired


@dataclasses.dataclass
class HeldStats:
    held_fraction: float
    held_ttft_p50_s: float
    held_ttft_p99_s: float
    held_max: int


def held_stats(sim: Simulation) -> HeldStats:
    cluster = sim.cluster
    measured = sim.measured
    was_held = np.asarray(getattr(cluster, "was_held", [False] * len(measured)), dtype=bool)[measured]
    log = cluster.log
    ttft = (np.asarray(log.first_token_at) - sim.workload.arrival_s)[measured]
    served_held = ttft[was_held & ~np.isnan(ttft)]

    def pct(q: float) -> float:
        return float(np.percentile(served_held, q)) if len(served_held) else float("nan")

    return HeldStats(float(was_held.mean()) if len(was_held) else 0.0, pct(50), pct(99),
                     int(getattr(cluster, "held_max", 0)))


def compare(workload: Workload, profile: ReplicaProfile, spec: AutoscalingSpec, *, seeds: int = 3,
            config: SimConfig = SimConfig(), max_held: int = 100, hold_timeout_s: float = 600.0,
            ) -> list[tuple[SimResult, HeldStats]]:
    """Keep one replica (minReplicas 1) vs scale to zero with the activator, each on `seeds` cluster
    seeds (startup times drawn differently), results pooled."""
    keep_one = spec.model_copy(update={"min_replicas": 1, "activation": None, "scale_to_zero_after_seconds": None})
    rows = []
    for name in ("keep-one", "activator"):
        results, stats = [], []
        for seed in range(seeds):
            run_config = dataclasses.replace(config, seed=seed)
            if name == "keep-one":
                sim = Simulation(workload, profile, run_config)
                result = sim.run(TokenscalePolicy(keep_one))
                result.policy = "tokenscale, minReplicas 1"
            else:
                sim = ActivatorSimulation(workload, profile, run_config, max_held=max_held,
                                          hold_timeout_s=hold_timeout_s)
                result = sim.run(ActivatorPolicy(spec))
            results.append(result)
            stats.append(held_stats(sim))
        pooled = HeldStats(
            float(np.mean([s.held_fraction for s in stats])),
            float(np.nanmean([s.held_ttft_p50_s for s in stats])) if name == "activator" else float("nan"),
            float(np.nanmax([s.held_ttft_p99_s for s in stats])) if name == "activator" else float("nan"),
            max(s.held_max for s in stats))
        rows.append((combine(results), pooled))
    return rows
