"""The simulation loop: workload -> router -> replicas, metrics scraped, an autoscaler acting.

    result = simulate(workload, profile, autoscaler)

The autoscaler (tokenscale's policy or a baseline, see autoscalers.py) is called at its own
interval and answers a replica count; the cluster applies it with the profile's startup delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .cluster import DRAINING, DROP_UNFINISHED, READY, STARTING, Cluster
from .profiles import ReplicaProfile
from .prometheus import MetricsConfig, PrometheusView, Sample
from .results import RunRecord, SimResult, summarise
from .workload import Workload


@dataclass(frozen=True)
class SimConfig:
    dt_s: float = 0.5  # tick of the replica model
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    timeline_interval_s: float = 10.0  # resolution of the recorded timeline (plots)
    tail_limit_s: float = 900.0  # after the last arrival, requests still in flight this long are dropped
    ttft_target_s: float | None = None  # SLO; None = the profile's
    warm_start_utilisation: float = 0.7  # the replicas every policy starts with: first minute's work at this
    warmup_s: float = 1800.0  # the trace's last 30 min replayed before it, unmeasured (Workload.with_warmup):
    # the longest look-back of any policy (the burst window), so every one starts the trace warm
    seed: int = 0


class Autoscaler(Protocol):
    name: str
    interval_s: float  # how often it decides
    instant_startup: bool  # only the oracle: its replicas are ready at once
    wants_concurrency: bool  # only Knative's KPA: 1-second samples of in-flight requests

    def initial_replicas(self, sim: Simulation) -> int: ...

    def decide(self, now: float, sim: Simulation) -> int: ...


class Simulation:
    """State a policy may look at: `metrics` (the Prometheus view), `replica_counts()`,
    `concurrency` (1-s in-flight samples, KPA only), and, for the oracle only, `workload`."""

    def __init__(self, workload: Workload, profile: ReplicaProfile, config: SimConfig = SimConfig()):
        if len(workload) == 0:
            raise ValueError("the workload has no requests")
        self.trace = workload  # what is measured
        self.warmup_s = config.warmup_s if config.warmup_s > 0 else 0.0
        workload = workload.with_warmup(self.warmup_s)
        self.workload = workload  # what is replayed: the warm-up prefix, then the trace
        self.measured = workload.arrival_s >= self.warmup_s
        self.profile = profile
        self.config = config
        self.metrics = PrometheusView(config.metrics)
        self.cluster = Cluster(workload, profile, seed=config.seed, on_first_token=self.metrics.observe_ttft)
        self.concurrency: list[float] = []  # one sample per second: in-flight requests, ready pods
        self.mean_input = float(workload.input_tokens.mean())
        self.mean_output = float(workload.output_tokens.mean())
        # one replica's generated tokens/s at saturation for this workload's mean lengths
        self.reference_capacity_tps = profile.capacity_tokens_per_s(self.mean_input, self.mean_output)
        self.work_per_second = request_work_per_second(workload, profile)
        self.desired = 0
        self.scale_events: list[tuple[float, int, int]] = []  # (time, from, to)

    def replica_counts(self) -> tuple[int, int, int]:
        """(starting, ready, draining) pods right now."""
        return self.cluster.counts()

    def warm_start_replicas(self) -> int:
        """Replicas that serve the first minute's work at the warm-start utilisation."""
        first_minute = self.work_per_second[:60]
        return max(1, math.ceil(first_minute.mean() / self.config.warm_start_utilisation))

    def run(self, autoscaler: Autoscaler) -> SimResult:
        config, cluster, workload = self.config, self.cluster, self.workload
        dt = config.dt_s
        arrivals = cluster.arrival
        n_requests = len(arrivals)
        scrape_every = config.metrics.scrape_interval_s
        timeline_every = config.timeline_interval_s
        self.desired = max(0, int(autoscaler.initial_replicas(self)))
        cluster.scale_to(self.desired, 0.0, instant=True)
        next_decision = 0.0
        next_scrape = 0.0
        next_concurrency = 0.0
        next_timeline = 0.0
        timeline = _Timeline()
        last_generated = 0.0
        demand_tokens = 0.0
        gpu_seconds = 0.0
        gpus = self.profile.gpus_per_replica
        index = 0
        t = 0.0
        end_of_arrivals = workload.duration_s
        hard_end = end_of_arrivals + config.tail_limit_s
        while True:
            if index >= n_requests and (t > hard_end or (cluster.served + cluster.dropped) >= n_requests):
                break
            cluster.promote_ready(t)
            if t >= next_scrape:
                waiting, running, kv, pods = cluster.gauges()
                self.metrics.record(
                    Sample(
                        t,
                        cluster.generated_tokens,
                        cluster.prompt_tokens,
                        waiting,
                        running,
                        kv,
                        pods,
                        cluster.served,
                        cluster.served_output_tokens,
                    )
                )
                next_scrape += scrape_every
            if autoscaler.wants_concurrency and t >= next_concurrency:
                self.concurrency.append(float(cluster.in_flight()))
                next_concurrency += 1.0
            if t >= next_decision:
                desired = max(0, int(autoscaler.decide(t, self)))
                if desired != self.desired:
                    if t >= self.warmup_s:
                        self.scale_events.append((t, self.desired, desired))
                    self.desired = desired
                cluster.scale_to(desired, t, instant=autoscaler.instant_startup)
                next_decision += autoscaler.interval_s
            for replica in cluster.live:
                if replica.waiting and replica.state != STARTING:
                    cluster.admit(replica, t)
            t_end = t + dt
            while index < n_requests and arrivals[index] < t_end:
                demand_tokens += cluster.outputs[index]
                cluster.route(index, arrivals[index])
                index += 1
            existing = 0
            for replica in cluster.live:
                existing += 1
                if replica.state == READY or replica.state == DRAINING:
                    if replica.admitted:
                        cluster.step(replica, t, dt)
            if self.warmup_s <= t < end_of_arrivals:  # the trace's own span, the same for every policy
                gpu_seconds += existing * gpus * dt
            cluster.retire_drained(t_end)
            if t_end >= next_timeline + timeline_every:
                starting, ready, draining = cluster.counts()
                span = t_end - next_timeline
                timeline.add(
                    t_end - self.warmup_s,
                    demand_tokens / span,
                    (cluster.generated_tokens - last_generated) / span,
                    starting + ready + draining,
                    ready,
                    self.desired,
                    ready * self.reference_capacity_tps,
                )
                demand_tokens = 0.0
                last_generated = cluster.generated_tokens
                next_timeline = t_end
            t = t_end
        for replica in list(cluster.live):  # the tail limit ran out: what is left is dropped
            cluster.abandon(replica, DROP_UNFINISHED)
        log = cluster.finalise_log()
        lost = np.flatnonzero(np.isnan(log.finished_at) & (log.dropped < 0))
        log.dropped[lost] = DROP_UNFINISHED  # none expected: count them, never lose one silently
        cluster.dropped += len(lost)
        measured = self.measured
        return summarise(RunRecord(
            policy=autoscaler.name,
            parameters=dict(getattr(autoscaler, "parameters", {})),
            trace=workload.name,
            profile=self.profile,
            ttft_target_s=config.ttft_target_s if config.ttft_target_s is not None else self.profile.ttft_target_s,
            arrival_s=workload.arrival_s[measured],
            input_tokens=workload.input_tokens[measured],
            output_tokens=workload.output_tokens[measured],
            admitted_at=log.admitted_at[measured],
            first_token_at=log.first_token_at[measured],
            dropped=log.dropped[measured],
            gpu_seconds=gpu_seconds,
            duration_s=end_of_arrivals - self.warmup_s,
            scale_events=list(self.scale_events),
            timeline=timeline.arrays(),
        ))


def request_work_per_second(workload: Workload, profile: ReplicaProfile) -> np.ndarray:
    """Replica-seconds of work arriving in each second: each request's prefill plus its share of
    saturated decode steps, at the workload's mean lengths. What the oracle plans with."""
    mean_in = float(workload.input_tokens.mean())
    mean_out = float(workload.output_tokens.mean())
    batch = profile.saturated_batch(mean_in, mean_out)
    step = profile.step_seconds(batch, batch * (mean_in + mean_out / 2))
    work = workload.input_tokens / profile.prefill_tokens_per_s + (workload.output_tokens - 1) * step / batch
    seconds = int(math.ceil(workload.duration_s)) + 1
    return np.bincount(workload.arrival_s.astype(np.int64), weights=work, minlength=seconds)[:seconds]


class _Timeline:
    FIELDS = ("time", "demand_tps", "served_tps", "replicas", "ready", "desired", "capacity_tps")

    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, *row) -> None:
        self.rows.append(row)

    def arrays(self) -> dict[str, np.ndarray]:
        table = np.array(self.rows, dtype=np.float64).reshape(-1, len(self.FIELDS))
        return {name: table[:, i] for i, name in enumerate(self.FIELDS)}


def simulate(
    workload: Workload, profile: ReplicaProfile, autoscaler: Autoscaler, config: SimConfig = SimConfig()
) -> SimResult:
    return Simulation(workload, profile, config).run(autoscaler)
