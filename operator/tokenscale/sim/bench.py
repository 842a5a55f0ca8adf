"""The autoscaling benchmark: for each trace, each policy's cost at the SLO, tuned.

For every (trace, policy) the policy's main target is searched on a geometric grid, from its
cheapest plausible setting towards more capacity, until >= `slo` of requests meet the TTFT
target; the step before and after are then bisected three times. The cheapest passing setting's
GPU-hours are the policy's cost at the SLO. Each (trace, policy) search is one task, so two
worker processes split the run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from tokenscale.api import AutoscalingSpec
from tokenscale.api.models import CapacitySource, CapacitySpec, SloSpec

from . import workload as wl
from .autoscalers import BASELINE_NAMES, POLICY_NAMES, TokenscalePolicy, make_autoscaler
from .profiles import ReplicaProfile, get_profile
from .results import SimResult, combine
from .simulator import SimConfig, Simulation, request_work_per_second

SLO_ATTAINMENT = 0.99
MEAN_REPLICAS = 4.0  # every trace is scaled to need this many replicas on average (at saturation)
MAX_REPLICAS = 256
COST_CAP_OVER_PEAK = 2.0
SEEDS = 3  # cluster seeds per setting: replica startup times drawn three ways
ORACLE_SMOOTHING_S = (4.0, 30.0)
TOKENSCALE_CAPACITY_SHARE = 0.8  # tokenscale's target while its burst headroom is searched
REQUEST_TRACES = ("azure2023_code_1h.csv", "azure2023_conv_1h.csv", "mooncake_fast25_conversation_1h.csv")
GENERATED = ("poisson", "bursty", "diurnal", "flash-crowd")
# tokenscale with one setting for every trace, no tuning: its shipped defaults, and learned capacity
# (at the profile's SLO) started from a target of half and twice the true capacity
FIXED_ROWS = {"tokenscale-defaults": None, "tokenscale-learned-0.5x": 0.5, "tokenscale-learned-2x": 2.0}
BENCH_POLICIES = (*POLICY_NAMES, *FIXED_ROWS)
STARTUP_SWEEP_S = (5.0, 15.0, 30.0, 60.0, 90.0)
BURSTY_TRACES = ("azure2023_code_1h", "bursty", "flash-crowd")


@dataclass(frozen=True)
class TraceSpec:
    """A trace file, or one of the generators, scaled to `mean_replicas` of work."""

    name: str  # the path of a CSV, or a generator name
    mean_replicas: float = MEAN_REPLICAS
    duration_s: float = 3600.0
    seed: int = 0

    @property
    def is_file(self) -> bool:
        return self.name not in GENERATED


def generated_lengths() -> wl.Lengths:
    return wl.Lengths(input_mean=1500, input_cv=1.5, output_mean=300, output_cv=1.0)


@lru_cache(maxsize=8)
def build_workload(spec: TraceSpec, profile_name: str) -> wl.Workload:
    """The trace, scaled to `mean_replicas` replicas of work: a file's requests are replayed
    several times over (`Workload.amplified`, its shape kept); a generator is re-run at the rate
    that gives that much work (so its noise is that of the rate, not of a copied pilot)."""
    profile = get_profile(profile_name)
    if spec.is_file:
        jitter = 3.0 if "mooncake" in Path(spec.name).name else 0.0  # 3-s timestamp steps
        raw = wl.load_csv(spec.name, jitter_s=jitter, seed=spec.seed, max_duration_s=spec.duration_s)
        work = float(request_work_per_second(raw, profile).mean())
        return raw.amplified(spec.mean_replicas / work, seed=spec.seed)
    pilot = _generate(spec.name, spec.duration_s, spec.seed, 1.0)
    work = float(request_work_per_second(pilot, profile).mean())
    return _generate(spec.name, spec.duration_s, spec.seed, spec.mean_replicas / work)


def _generate(name: str, duration_s: float, seed: int, scale: float) -> wl.Workload:
    """The generators at `scale` times a nominal 1 request/s mean."""
    lengths = generated_lengths()
    if name == "poisson":
        return wl.poisson(scale, duration_s, lengths, seed=seed)
    if name == "bursty":  # 5x for 2 minutes out of each 10
        return wl.bursty(0.55 * scale, 2.78 * scale, duration_s, on_s=120, off_s=480, lengths=lengths, seed=seed)
    if name == "diurnal":  # a whole day compressed into the hour
        return wl.diurnal(1.6 * scale, duration_s, day_s=duration_s, lengths=lengths, seed=seed)
    if name == "flash-crowd":  # 6x within 30 s, held 5 minutes, decaying over 5
        return wl.flash_crowd(0.6 * scale, 3.6 * scale, duration_s, lengths=lengths, seed=seed)
    raise ValueError(f"unknown generator {name!r}; known: {', '.join(GENERATED)}")


# --- tuning -----------------------------------------------------------------------------------


@dataclass
class Tuned:
    policy: str
    best: SimResult | None  # cheapest run that met the SLO
    closest: SimResult  # highest attainment seen (reported when nothing met the SLO)
    runs: list[SimResult] = field(default_factory=list)


def _search_space(policy: str, sim_probe: Simulation, spec: AutoscalingSpec, quick: bool, options: dict):
    """(start, factor towards more capacity, integer?) for the policy's main target."""
    capacity = sim_probe.reference_capacity_tps
    profile = sim_probe.profile
    if policy == "tokenscale" and "headroom_at" in options:
        return 1.0, 1.4, False  # burstHeadroom at a fixed target, from none upwards
    if policy in ("hpa", "tokenscale"):
        return 0.8 * capacity, 0.8, False  # tokens/s per replica, from near saturation downwards
    if policy == "keda":
        return 8.0, 0.5, False  # queued requests per replica
    if policy == "kpa":
        return profile.max_batch / 2, 0.7, False  # in-flight requests per replica
    if policy == "oracle":
        return 1.2, 0.85, False  # utilisation of the saturated capacity
    raise ValueError(policy)


def tune(
    policy: str,
    workload: wl.Workload,
    profile: ReplicaProfile,
    spec: AutoscalingSpec,
    *,
    config: SimConfig = SimConfig(),
    slo: float = SLO_ATTAINMENT,
    quick: bool = False,
    seeds: int = 1,
) -> Tuned:
    runs: list[SimResult] = []

    def run(target: float) -> SimResult:
        result = simulate_seeds(policy, target, spec, {}, workload, profile, config, seeds)
        runs.append(result)
        return result

    if policy == "static":
        return _tune_static(run, runs, workload, profile, config, spec, slo)
    if policy == "oracle":  # the lower bound: the best of a short and a long planning average
        tuned = [
            _search(policy, workload, profile, spec, config, slo, quick, {"smooth_s": smooth}, seeds)
            for smooth in ORACLE_SMOOTHING_S
        ]
        return _pick(policy, [r for t in tuned for r in t.runs], slo)
    if policy == "tokenscale":  # the best of its knobs: the target, or burst headroom (over the
        # window's low or peak) at the measured capacity (the searches' common start, 0.8x saturation)
        capacity = TOKENSCALE_CAPACITY_SHARE * Simulation(workload, profile, config).reference_capacity_tps
        tuned = [
            _search(policy, workload, profile, spec, config, slo, quick, options, seeds)
            for options in ({}, {"headroom_at": capacity, "baseline": "Low"},
                            {"headroom_at": capacity, "baseline": "Peak"})
        ]
        return _pick(policy, [r for t in tuned for r in t.runs], slo)
    return _search(policy, workload, profile, spec, config, slo, quick, {}, seeds)


def true_capacity(workload: wl.Workload, profile: ReplicaProfile, config: SimConfig) -> float:
    """The capacity the learned rows start half and twice away from: the searches' common start,
    0.8x one replica's saturation throughput for the trace's mean lengths."""
    return TOKENSCALE_CAPACITY_SHARE * Simulation(workload, profile, config).reference_capacity_tps


def fixed_spec(row: str, spec: AutoscalingSpec, capacity: float, ttft_target_s: float) -> AutoscalingSpec:
    """The one setting of a fixed row: the spec as shipped, or learned capacity at the SLO from a start."""
    factor = FIXED_ROWS[row]
    if factor is None:
        return spec
    return spec.model_copy(update={
        "target_tokens_per_second_per_replica": factor * capacity,
        "slo": SloSpec(ttft_seconds=ttft_target_s, percentile=100 * SLO_ATTAINMENT),
        "capacity": CapacitySpec(source=CapacitySource.Learned),
    })


def run_fixed(row: str, workload: wl.Workload, profile: ReplicaProfile, spec: AutoscalingSpec, *,
              config: SimConfig = SimConfig(), slo: float = SLO_ATTAINMENT, seeds: int = 1) -> Tuned:
    """A fixed row: one run on `seeds` cluster seeds, no search."""
    ttft = config.ttft_target_s if config.ttft_target_s is not None else profile.ttft_target_s
    row_spec = fixed_spec(row, spec, true_capacity(workload, profile, config), ttft)
    results = []
    for k in range(seeds):
        policy = TokenscalePolicy(row_spec)
        policy.name = row
        results.append(Simulation(workload, profile, dataclasses.replace(config, seed=config.seed + k)).run(policy))
    return _pick(row, [combine(results)], slo)


def simulate_seeds(policy, target, spec, options, workload, profile, config, seeds) -> SimResult:
    """One setting run on `seeds` cluster seeds (each draws its own replica startup times), as one
    result: the requests of all runs pooled (attainment), the means of the rest. A dynamic policy's
    attainment moves by points with the startup draws; one seed would reward a lucky draw."""
    results = [
        Simulation(workload, profile, dataclasses.replace(config, seed=config.seed + k)).run(
            make_autoscaler(policy, target, spec, **options)
        )
        for k in range(seeds)
    ]
    return combine(results)


def _search(policy, workload, profile, spec, config, slo, quick, options, seeds=1) -> Tuned:
    runs: list[SimResult] = []

    def run(target: float) -> SimResult:
        result = simulate_seeds(policy, target, spec, options, workload, profile, config, seeds)
        runs.append(result)
        return result

    probe = Simulation(workload, profile, config)
    start, factor, _ = _search_space(policy, probe, spec, quick, options)
    steps = 6 if quick else 10
    refine = 1 if quick else 3
    cost_cap = COST_CAP_OVER_PEAK * peak_provisioning_gpu_hours(probe)
    failing, passing = None, None
    target = start
    if run(target).slo_attainment >= slo:  # the start passes: loosen until it fails
        passing = target
        for _ in range(steps - 1):
            target /= factor
            if run(target).slo_attainment < slo:
                failing = target
                break
            passing = target
    else:  # tighten until it passes; give up once it costs more than holding the peak and more
        # capacity no longer helps (a policy that oscillates can cost more at a looser target)
        failing = target
        previous = runs[-1]
        for _ in range(steps - 1):
            target *= factor
            result = run(target)
            if result.slo_attainment >= slo:
                passing = target
                break
            failing = target
            hopeless = result.gpu_hours > 2 * cost_cap or (
                result.gpu_hours > cost_cap and result.slo_attainment <= previous.slo_attainment + 0.005
            )
            if hopeless:
                break
            previous = result
    if passing is not None and failing is not None:
        for _ in range(refine):  # bisect geometrically between the last failure and the first pass
            middle = math.sqrt(failing * passing)
            if run(middle).slo_attainment >= slo:
                passing = middle
            else:
                failing = middle
    return _pick(policy, runs, slo)


def peak_provisioning_gpu_hours(sim: Simulation) -> float:
    """GPU-hours of holding the trace's peak work (10-s average) all along: the search gives
    up on a policy that costs a multiple of it and still misses the SLO."""
    work = sim.work_per_second
    peak = float(np.convolve(work, np.ones(10) / 10, mode="valid").max()) if len(work) >= 10 else work.max()
    return max(1.0, math.ceil(peak)) * sim.profile.gpus_per_replica * sim.workload.duration_s / 3600


def _tune_static(run, runs, workload, profile, config, spec, slo) -> Tuned:
    """The fewest replicas that meet the SLO all trace long: a binary search over the count."""
    low, high = 1, max(spec.max_replicas, 1)
    peak_work = Simulation(workload, profile, config).work_per_second.max()
    guess = min(high, max(1, math.ceil(peak_work)))
    if run(guess).slo_attainment >= slo:
        high = guess
    else:
        low = guess + 1
        if low <= high and run(high).slo_attainment < slo:
            return _pick("static", runs, slo)
    while low < high:
        middle = (low + high) // 2
        if run(middle).slo_attainment >= slo:
            high = middle
        else:
            low = middle + 1
    return _pick("static", runs, slo)


def _pick(policy: str, runs: list[SimResult], slo: float) -> Tuned:
    passing = [r for r in runs if r.slo_attainment >= slo]
    best = min(passing, key=lambda r: r.gpu_hours) if passing else None
    closest = max(runs, key=lambda r: (r.slo_attainment, -r.gpu_hours))
    return Tuned(policy, best, closest, runs)


# --- the whole benchmark ----------------------------------------------------------------------


def default_traces(traces_dir: Path | None, explicit: Iterable[str] = ()) -> list[TraceSpec]:
    specs = [TraceSpec(str(path)) for path in explicit]
    if not specs and traces_dir is not None and traces_dir.is_dir():
        specs += [TraceSpec(str(traces_dir / n)) for n in REQUEST_TRACES if (traces_dir / n).exists()]
    specs += [TraceSpec(name) for name in GENERATED]
    return specs


def _task(trace: TraceSpec, policy: str, profile_name: str, spec_json: dict, config: SimConfig, quick: bool,
          seeds: int, startup_s: float | None = None):
    profile = get_profile(profile_name)
    if startup_s is not None:  # the startup sweep: a third of the mean either way, as the profile's 90 +- 30 s
        profile = dataclasses.replace(profile, startup_s=startup_s, startup_spread_s=startup_s / 3)
    spec = AutoscalingSpec.model_validate(spec_json)
    workload = build_workload(trace, profile_name)
    if policy in FIXED_ROWS:
        tuned = run_fixed(policy, workload, profile, spec, config=config, seeds=seeds)
    else:
        tuned = tune(policy, workload, profile, spec, config=config, quick=quick, seeds=seeds)
    return trace, policy, workload.peak_to_mean(60.0), tuned


def bench_spec() -> AutoscalingSpec:
    """tokenscale's settings in the benchmark: the defaults, bounds wide enough for the peaks."""
    return AutoscalingSpec(min_replicas=1, max_replicas=MAX_REPLICAS)


def run_benchmark(
    traces: list[TraceSpec],
    *,
    profile_name: str = "h100-llama-8b",
    policies: Iterable[str] = BENCH_POLICIES,
    config: SimConfig = SimConfig(),
    workers: int = 2,
    quick: bool = False,
    seeds: int = SEEDS,
    on_done: Callable[[str, str], None] | None = None,
) -> dict:
    """Run every (trace, policy) search; return the JSON-ready report."""
    policies = list(policies)
    spec_json = bench_spec().model_dump(by_alias=True, mode="json")
    tasks = [(t, p, profile_name, spec_json, config, quick, seeds) for t in traces for p in policies]
    found: dict[tuple[str, str], tuple[float, Tuned]] = {}
    if workers <= 1:
        for task in tasks:
            trace, policy, ratio, tuned = _task(*task)
            found[(trace.name, policy)] = (ratio, tuned)
            if on_done:
                on_done(trace.name, policy)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_task, *task) for task in tasks]
            for future in as_completed(futures):
                trace, policy, ratio, tuned = future.result()
                found[(trace.name, policy)] = (ratio, tuned)
                if on_done:
                    on_done(trace.name, policy)
    return _report(traces, policies, found, profile_name, config, seeds)


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference <= 0:
        return None
    return round(value / reference, 4)


def _report(traces, policies, found, profile_name, config, seeds) -> dict:
    entries = []
    all_details = []
    for trace in traces:
        tuned = {p: found[(trace.name, p)][1] for p in policies}
        cost = {p: (t.best.gpu_hours if t.best else None) for p, t in tuned.items()}
        baseline_costs = [c for p, c in cost.items() if p in BASELINE_NAMES and c is not None]
        best_baseline = min(baseline_costs) if baseline_costs else None
        oracle = cost.get("oracle")
        ours = cost.get("tokenscale")
        rows = []
        details = []
        for policy in policies:
            t = tuned[policy]
            shown = t.best or t.closest
            rows.append(
                {
                    "policy": policy,
                    "gpu_hours_at_slo": None if cost[policy] is None else round(cost[policy], 4),
                    "gpu_hours": round(shown.gpu_hours, 4),  # of the run shown, met or not
                    "slo_attainment": round(shown.slo_attainment, 5),
                    "ratio_to_best_baseline": _ratio(cost[policy], best_baseline),
                    "ratio_to_oracle": _ratio(cost[policy], oracle),
                    "ratio_to_tokenscale": _ratio(shown.gpu_hours, ours) if policy in FIXED_ROWS else None,
                }
            )
            run = shown.to_dict()
            run["workload"] = run.pop("trace")  # the scaled workload's name
            details.append(
                {"trace": trace.name, "policy": policy, "met_slo": t.best is not None, "runs": len(t.runs), **run}
            )
        entries.append(
            {
                "trace": trace.name,
                "peak_to_mean": round(found[(trace.name, policies[0])][0], 3),
                "policies": rows,
            }
        )
        all_details += details
    profile = get_profile(profile_name)
    return {
        "traces": entries,
        "details": all_details,  # the chosen run of each policy: every measure, for the table
        "settings": {
            "profile": profile_name,
            "slo": f">= {SLO_ATTAINMENT:.0%} of requests with TTFT <= "
            f"{config.ttft_target_s or profile.ttft_target_s:g} s + their own prefill",
            "mean_replicas": MEAN_REPLICAS,
            "max_replicas": MAX_REPLICAS,
            "scrape_interval_s": config.metrics.scrape_interval_s,
            "rate_windows_s": [config.metrics.short_window_s, config.metrics.long_window_s],
            "gpu_price_per_hour": profile.gpu_price_per_hour,
            "cluster_seeds": seeds,
        },
    }


# --- what faster cold starts buy --------------------------------------------------------------------


def startup_sweep(
    traces: list[TraceSpec],
    *,
    startups: Iterable[float] = STARTUP_SWEEP_S,
    profile_name: str = "h100-llama-8b",
    config: SimConfig = SimConfig(),
    workers: int = 2,
    quick: bool = False,
    seeds: int = 1,
    on_done: Callable[[str, str], None] | None = None,
) -> list[dict]:
    """Tuned tokenscale at each replica startup time (mean, +- a third), against the oracle (whose
    replicas are ready at once: it does not depend on startup) and static provisioning (neither)."""
    spec_json = bench_spec().model_dump(by_alias=True, mode="json")
    startups = list(startups)
    tasks = [(t, "tokenscale", profile_name, spec_json, config, quick, seeds, s) for t in traces for s in startups]
    tasks += [(t, p, profile_name, spec_json, config, quick, seeds, None) for t in traces for p in ("oracle", "static")]
    found: dict[tuple[str, str, float | None], Tuned] = {}
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_task, *task): task[-1] for task in tasks}
        for future in as_completed(futures):
            trace, policy, _peak_to_mean, tuned = future.result()
            found[(trace.name, policy, futures[future])] = tuned
            if on_done:
                on_done(trace.name, policy)
    rows = []
    for trace in traces:
        oracle, static = found[(trace.name, "oracle", None)].best, found[(trace.name, "static", None)].best
        for startup in startups:
            ours = found[(trace.name, "tokenscale", startup)]
            cost = ours.best.gpu_hours if ours.best else None
            rows.append({
                "trace": trace.name,
                "startup_s": startup,
                "tokenscale_gpu_hours": None if cost is None else round(cost, 4),
                "slo_attainment": round((ours.best or ours.closest).slo_attainment, 5),
                "oracle_gpu_hours": None if oracle is None else round(oracle.gpu_hours, 4),
                "static_gpu_hours": None if static is None else round(static.gpu_hours, 4),
                "ratio_to_oracle": _ratio(cost, oracle.gpu_hours if oracle else None),
                "ratio_to_static": _ratio(cost, static.gpu_hours if static else None),
                "tuned": (ours.best or ours.closest).parameters,
            })
    return rows
