"""The capacity learner runs unchanged in the simulator: `policy.decide` reads the TTFT quantiles the
simulated Prometheus gives, and the learned rows of the benchmark are one setting on every trace."""

from __future__ import annotations

import math

import pytest

from tokenscale.sim.autoscalers import TokenscalePolicy, signals_from
from tokenscale.sim.bench import FIXED_ROWS, TraceSpec, bench_spec, build_workload, fixed_spec, true_capacity
from tokenscale.sim.profiles import get_profile
from tokenscale.sim.simulator import SimConfig, Simulation

PROFILE = "h100-llama-8b"


@pytest.fixture(scope="module")
def workload():
    return build_workload(TraceSpec("poisson", duration_s=2400.0), PROFILE)


@pytest.mark.parametrize("row", ["tokenscale-learned-0.5x", "tokenscale-learned-2x"])
def test_learned_capacity_in_the_simulator(workload, row):
    """From a target half or twice the true capacity (0.8x saturation), the simulated replicas teach the
    learner a capacity closer to it within the run (never over 1.4x it), and the decisions say they
    used it. (Upwards the probe is slow on steady traffic: docs/benchmarks.md.)"""
    profile, config = get_profile(PROFILE), SimConfig(warmup_s=1200.0)
    capacity = true_capacity(workload, profile, config)
    policy = TokenscalePolicy(fixed_spec(row, bench_spec(), capacity, profile.ttft_target_s))
    result = Simulation(workload, profile, config).run(policy)
    start = FIXED_ROWS[row] * capacity
    used = [value for _time, value, _source in policy.capacity_trace]
    assert used[0] == pytest.approx(start)
    assert policy.capacity_trace[-1][2] == "learned"
    assert abs(math.log(used[-1] / capacity)) < abs(math.log(start / capacity)) - 0.1, used[-1] / capacity
    assert used[-1] <= 1.4 * capacity
    assert result.parameters["capacity_source"] == "Learned"
    assert result.parameters["learned_tokens_per_second_per_replica"] == pytest.approx(used[-1], abs=0.1)
    assert any("(learned: " in decision.reason for _time, decision in policy.decisions)
    assert result.slo_attainment >= 0.99


def test_the_simulated_prometheus_gives_the_slo_quantile(workload):
    profile = get_profile(PROFILE)
    sim = Simulation(workload, profile, SimConfig(warmup_s=0.0))
    sim.run(TokenscalePolicy(bench_spec()))
    signals = signals_from(sim.metrics, 600.0)
    assert signals.ttft_p99_seconds is not None and signals.ttft_p90_seconds is not None
    assert signals.ttft_p99_seconds >= signals.ttft_p90_seconds


def test_the_defaults_row_is_the_shipped_spec(workload):
    spec = bench_spec()
    assert fixed_spec("tokenscale-defaults", spec, 1000.0, 2.0) == spec
    learned = fixed_spec("tokenscale-learned-2x", spec, 1000.0, 2.0)
    assert learned.target_tokens_per_second_per_replica == 2000.0
    assert (learned.slo.ttft_seconds, learned.slo.percentile, str(learned.capacity.source)) == (2.0, 99.0, "Learned")
