"""Scale to zero with the activator in the simulator: held requests, the wake-up, the bounds."""

from __future__ import annotations

import numpy as np

from tokenscale.api.models import AutoscalingSpec
from tokenscale.sim.activator import ActivatorPolicy, ActivatorSimulation, compare, held_stats
from tokenscale.sim.profiles import H100_LLAMA_8B
from tokenscale.sim.simulator import SimConfig
from tokenscale.sim.workload import Workload, sparse_sessions

SPEC = AutoscalingSpec.model_validate({"minReplicas": 0, "maxReplicas": 2, "targetTokensPerSecondPerReplica": 3000,
                                       "scaleToZeroAfterSeconds": 120, "activation": {"activator": True}})
PROFILE = H100_LLAMA_8B.with_overrides(startup_spread_s=0.0)  # a cold start of exactly 90 s
CONFIG = SimConfig(warmup_s=0)


def test_sparse_sessions_are_sparse() -> None:
    trace = sparse_sessions(4, 6 * 3600, seed=3)
    assert 4 * 6 * 3 * 0.4 <= len(trace) <= 4 * 6 * 12 * 1.6
    gaps = np.diff(trace.arrival_s)
    assert gaps.max() > 600  # long silences between sessions: what scale to zero is for
    assert (gaps >= 0).all()


def _two_visits(first: int, second: int) -> Workload:
    """`first` requests at t=0..1 s, then silence, then `second` requests at 2 h."""
    arrivals = np.concatenate([np.linspace(0, 1, first), 7200 + np.linspace(0, 1, second)])
    n = len(arrivals)
    return Workload("two-visits", arrivals, np.full(n, 200, dtype=np.int64), np.full(n, 50, dtype=np.int64))


def test_held_requests_wake_the_service_at_once_and_wait_one_cold_start() -> None:
    sim = ActivatorSimulation(_two_visits(5, 5), PROFILE, CONFIG)
    policy = ActivatorPolicy(SPEC)
    result = sim.run(policy)
    assert result.dropped == 0 and result.served == 10
    stats = held_stats(sim)
    # The first visit meets the warm start (one replica from the beginning), the second a service at
    # zero: its five requests are held and answered after one cold start (90 s), woken at once.
    assert stats.held_fraction == 0.5
    assert 90 <= stats.held_ttft_p50_s <= 92
    ups = [(t, a, b) for t, a, b in sim.scale_events if (a, b) == (0, 1)]
    assert ups and abs(ups[0][0] - 7200) <= 0.5  # within one wake check of the first held arrival
    # back to zero after the first visit (the run ends when the second visit's requests are answered)
    assert [(a, b) for _t, a, b in sim.scale_events] == [(1, 0), (0, 1)]


def test_past_the_bound_or_the_timeout_the_activator_refuses() -> None:
    sim = ActivatorSimulation(_two_visits(1, 8), PROFILE, CONFIG, max_held=5)
    result = sim.run(ActivatorPolicy(SPEC))
    assert result.dropped_by_reason == {"activator-full": 3}
    sim = ActivatorSimulation(_two_visits(1, 4), PROFILE, CONFIG, hold_timeout_s=30)
    result = sim.run(ActivatorPolicy(SPEC))
    assert result.dropped_by_reason == {"hold-timeout": 4}  # the cold start outlasts the hold


def test_scale_to_zero_costs_less_than_one_replica_on_sparse_traffic() -> None:
    trace = sparse_sessions(2, 3 * 3600, seed=5)
    (keep, keep_held), (zero, held) = compare(trace, PROFILE, SPEC, seeds=1, config=CONFIG)
    assert zero.gpu_hours < 0.8 * keep.gpu_hours
    assert keep_held.held_fraction == 0 and 0 < held.held_fraction < 0.5
    assert zero.dropped == keep.dropped == 0
