"""The simulator's invariants: conservation, determinism, and the queue at and above capacity."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tokenscale.api import AutoscalingSpec
from tokenscale.sim import workload as wl
from tokenscale.sim.autoscalers import make_autoscaler
from tokenscale.sim.baselines import StaticReplicas
from tokenscale.sim.profiles import H100_LLAMA_8B, get_profile
from tokenscale.sim.simulator import SimConfig, Simulation, simulate

FIXED = wl.Lengths(input_mean=500, input_cv=0.0, output_mean=200, output_cv=0.0)


def _steady(rate: float, duration: float, seed: int = 1) -> wl.Workload:
    return wl.poisson(rate, duration, FIXED, seed=seed)


def test_every_request_is_served_or_dropped_under_a_scaling_policy():
    workload = wl.bursty(5, 60, 900, on_s=60, off_s=240, seed=3)
    spec = AutoscalingSpec(max_replicas=6)  # too few for the bursts: some requests must wait or drop
    profile = H100_LLAMA_8B.with_overrides(max_waiting=64, startup_s=40, startup_spread_s=10, drain_timeout_s=20)
    sim = Simulation(workload, profile, SimConfig(tail_limit_s=120, warmup_s=0))
    result = sim.run(make_autoscaler("hpa", 800.0, spec))
    log = sim.cluster.log
    served = ~np.isnan(log.finished_at)
    dropped = log.dropped >= 0
    assert not np.any(served & dropped)
    assert np.all(served | dropped)
    assert result.served + result.dropped == len(workload)
    assert result.served == int(served.sum())
    assert sum(result.dropped_by_reason.values()) == result.dropped
    # served requests have their whole story, in order
    assert np.all(log.admitted_at[served] >= workload.arrival_s[served] - 1e-9)
    assert np.all(log.first_token_at[served] >= log.admitted_at[served] - 1e-9)
    assert np.all(log.finished_at[served] >= log.first_token_at[served] - 1e-9)


def test_the_same_seed_gives_the_same_result_and_another_seed_differs():
    def once(seed: int):
        workload = wl.flash_crowd(4, 30, 600, seed=seed)
        return simulate(workload, H100_LLAMA_8B, make_autoscaler("kpa", 40, AutoscalingSpec()), SimConfig(seed=seed))


    first, second, other = once(5), once(5), once(6)
    assert first.to_dict(timeline=True) == second.to_dict(timeline=True)
    assert first.to_dict() != other.to_dict()


def test_below_capacity_served_throughput_equals_the_load_and_the_queue_stays_bounded():
    profile = H100_LLAMA_8B
    replicas = 2
    capacity = replicas * profile.capacity_requests_per_s(500, 200)
    rate = 0.6 * capacity
    workload = _steady(rate, 900)
    sim = Simulation(workload, profile, SimConfig(warmup_s=0))
    result = sim.run(StaticReplicas(replicas))
    assert result.dropped == 0
    # steady state, away from the ends: served generated tokens/s = offered tokens/s
    line = result.timeline
    middle = (line["time"] > 120) & (line["time"] < 840)
    offered = line["demand_tps"][middle].mean()
    served = line["served_tps"][middle].mean()
    assert served == pytest.approx(offered, rel=0.03)
    assert offered == pytest.approx(rate * 200, rel=0.05)
    waiting = np.array([s.waiting for s in sim.metrics.samples])
    assert waiting.max() <= 2 * replicas  # a few at most, never growing
    assert result.queue_wait_p99_s < 0.5
    assert result.slo_attainment == 1.0


def test_above_capacity_the_queue_grows_at_load_minus_capacity():
    profile = H100_LLAMA_8B
    replicas = 2
    capacity = replicas * profile.capacity_requests_per_s(500, 200)
    rate = 1.5 * capacity
    workload = _steady(rate, 600)
    sim = Simulation(workload, profile, SimConfig(tail_limit_s=0, warmup_s=0))
    sim.run(StaticReplicas(replicas))
    samples = [s for s in sim.metrics.samples if 150 <= s.time <= 540]
    times = np.array([s.time for s in samples])
    waiting = np.array([s.waiting for s in samples], dtype=float)
    slope = np.polyfit(times, waiting, 1)[0]  # requests/s added to the queue
    assert slope == pytest.approx(rate - capacity, rel=0.08)
    served_rate = np.polyfit(times, [s.finished_requests for s in samples], 1)[0]
    assert served_rate == pytest.approx(capacity, rel=0.08)


def test_startup_delay_and_drain_cost_gpu_time():
    workload = _steady(2.0, 600)
    profile = H100_LLAMA_8B.with_overrides(startup_s=100, startup_spread_s=0)
    sim = Simulation(workload, profile, SimConfig(warmup_s=0))

    class UpThenDown:
        name, interval_s, instant_startup, wants_concurrency, parameters = "test", 60.0, False, False, {}

        def initial_replicas(self, sim):
            return 1

        def decide(self, now, sim):
            return 3 if now < 300 else 1

    result = sim.run(UpThenDown())
    starting_then_ready = [r for r in sim.cluster.replicas if r.id > 0]
    assert all(r.ready_at - r.created_at == pytest.approx(100) for r in starting_then_ready)
    # two extra pods from 0 s to 300 s (their loading time counts), then a drain of a few seconds
    assert result.gpu_hours * 3600 == pytest.approx(sim.workload.duration_s + 2 * 300, abs=15)
    assert result.dropped == 0


def test_cpu_tiny_profile_is_known_and_saturates():
    profile = get_profile("cpu-tiny")
    assert profile.capacity_tokens_per_s(64, 64) > 0
    with pytest.raises(ValueError):
        get_profile("nonexistent")


def test_the_warm_up_replays_the_end_and_is_not_measured():
    workload = _steady(3.0, 900)
    sim = Simulation(workload, H100_LLAMA_8B, SimConfig(warmup_s=300))
    result = sim.run(StaticReplicas(2))
    tail = workload.arrival_s[workload.arrival_s >= workload.duration_s - 300][:-1]  # the last is t=0's
    assert len(sim.workload) == len(workload) + len(tail)
    # the trace's last 300 s, then the trace itself from t = 300 s
    assert np.allclose(sim.workload.arrival_s[: len(tail)], tail - (workload.duration_s - 300))
    assert np.array_equal(sim.workload.arrival_s[len(tail):], workload.arrival_s + 300)
    assert result.requests == len(workload) and result.served + result.dropped == len(workload)
    # GPU time is counted over the trace itself (from the end of the warm-up to its last arrival)
    assert result.gpu_hours * 3600 == pytest.approx(2 * workload.duration_s, abs=10)
    assert result.timeline["time"][0] < 0 <= result.timeline["time"][-1]


def test_a_trace_shorter_than_the_warm_up_is_repeated_to_fill_it():
    workload = _steady(3.0, 200)
    warm = workload.with_warmup(500)
    prelude = warm.arrival_s[warm.arrival_s < 500]
    one_period = int((workload.arrival_s < workload.duration_s).sum())
    assert len(prelude) == pytest.approx(one_period * 500 / workload.duration_s, rel=0.05)
    assert prelude.min() < 5 and prelude.max() < 500 and np.all(np.diff(prelude) >= 0)
    assert len(warm) - len(prelude) == len(workload)


def test_seeds_draw_their_own_startups_and_pool_their_requests():
    # Too few replicas for the bursts, so the startup draws matter: each seed is its own run, and
    # the combined result's attainment is that of all their requests together.
    from tokenscale.sim.bench import simulate_seeds

    workload = wl.bursty(5, 60, 900, on_s=60, off_s=240, seed=3)
    spec = AutoscalingSpec(max_replicas=6)
    profile = H100_LLAMA_8B.with_overrides(startup_s=40, startup_spread_s=20)
    config = SimConfig(tail_limit_s=120, warmup_s=0)
    singles = [
        simulate_seeds("hpa", 2000.0, spec, {}, workload, profile, dataclasses.replace(config, seed=k), 1)
        for k in range(3)
    ]
    pooled = simulate_seeds("hpa", 2000.0, spec, {}, workload, profile, config, 3)
    assert len({round(r.gpu_hours, 6) for r in singles}) > 1  # the seeds differ
    assert pooled.seeds == 3 and pooled.requests == 3 * len(workload)
    within = sum(r.slo_attainment * r.requests for r in singles)
    assert pooled.slo_attainment == pytest.approx(within / pooled.requests)
    assert pooled.worst_seed_attainment == min(r.slo_attainment for r in singles)
    assert pooled.gpu_hours == pytest.approx(np.mean([r.gpu_hours for r in singles]))


def test_a_trace_of_one_instant_gets_a_quiet_warm_up_and_is_all_measured():
    workload = wl.Workload("burst", np.zeros(5), np.full(5, 100), np.full(5, 50))
    sim = Simulation(workload, H100_LLAMA_8B, SimConfig(warmup_s=60))
    result = sim.run(StaticReplicas(1))
    assert result.requests == 5 and result.served == 5
