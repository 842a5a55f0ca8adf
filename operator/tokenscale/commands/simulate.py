"""`tokenscale simulate`: replay traffic through the autoscaling policy before deploying it."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DESCRIPTION = """\
Replay a request trace through a simulated service scaled by tokenscale's policy (the same
code the operator runs), and optionally the baselines, and report GPU-hours, the share of
requests within the TTFT target, TTFT percentiles, queue wait, drops, scale events and cost.

Your own traffic: export one row per request from your gateway or engine logs as a CSV with
the header `timestamp_s,input_tokens,output_tokens` (seconds from any origin; prompt and
generated token counts), then
  tokenscale simulate --trace requests.csv --spec my-service.yaml --compare --plot run.png
The autoscaling settings (min/maxReplicas, targetTokensPerSecondPerReplica, queue target,
scale-up/down behaviour, panic, tolerance) and costPerGpuHour come from the InferenceService
YAML; the replica's speed comes from a --profile, with engine.maxBatchSize and resources.gpus
taken from the spec. Change the YAML, run again, deploy the version that meets your target.
"""

EPILOG = """\
examples:
  tokenscale simulate --generate bursty --rate 40
  tokenscale simulate --trace requests.csv --time-scale 0.5 --spec service.yaml --json
  tokenscale simulate --trace requests.csv --policy tokenscale --policy hpa=1200 --policy static=6
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--trace", metavar="CSV", help="requests: timestamp_s,input_tokens,output_tokens")
    source.add_argument(
        "--generate",
        choices=("poisson", "bursty", "diurnal", "flash-crowd"),
        default=None,
        help="a built-in workload instead of a trace (default: bursty)",
    )
    parser.add_argument("--spec", metavar="YAML", help="an InferenceService (or just its spec) to take settings from")
    parser.add_argument("--profile", default="h100-llama-8b", metavar="NAME_OR_FILE",
                        help="replica model: h100-llama-8b, cpu-tiny, or a profile YAML (tokenscale calibrate --out)")
    parser.add_argument(
        "--policy",
        action="append",
        metavar="NAME[=TARGET]",
        help="policy to run (repeatable): tokenscale, hpa, keda, kpa, static, oracle; TARGET overrides its "
        "main target (hpa: tokens/s per pod, keda: queued requests per pod, kpa: concurrency per pod, "
        "static: replicas, oracle: utilisation, tokenscale: targetTokensPerSecondPerReplica)",
    )
    parser.add_argument("--compare", action="store_true", help="run tokenscale and every baseline (targets as "
                        "a user would set them from the spec: hpa and tokenscale targetTokensPerSecondPerReplica, "
                        "keda targetQueueDepthPerReplica, kpa Knative's default 70, static maxReplicas, oracle 0.8)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="stretch the trace's time (0.5 = twice the rate)")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="replay each request this many times (volume)")
    parser.add_argument("--jitter", type=float, default=0.0, metavar="S", help="spread arrivals over S seconds")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="replay only the first S seconds")
    parser.add_argument("--rate", type=float, default=30.0, help="generators: mean requests/s (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ttft-target", type=float, default=None, metavar="S", help="SLO: TTFT target in seconds")
    parser.add_argument("--startup", type=float, default=None, metavar="S", help="replica startup time (model load)")
    parser.add_argument("--gpu-price", type=float, default=None, help="$ per GPU-hour (default: spec or profile)")
    parser.add_argument("--scrape-interval", type=float, default=15.0, metavar="S")
    parser.add_argument("--tick", type=float, default=15.0, metavar="S", help="the operator's decision interval")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write results as JSON (stdout: -)")
    parser.add_argument("--plot", metavar="PNG", help="draw demand, capacity and replicas over time")


def load_spec(path: str | None):
    """The InferenceServiceSpec from a YAML file holding a whole object or only its spec."""
    import yaml

    from tokenscale.api import InferenceServiceSpec, parse_spec

    if path is None:
        return InferenceServiceSpec.model_validate({"model": {"source": "simulated"}})
    document = yaml.safe_load(Path(path).read_text())
    if isinstance(document, dict) and "spec" in document and "kind" in document:
        document = document["spec"]
    return parse_spec(document)


def _workload(args):
    from tokenscale.sim import workload as wl

    if args.trace:
        workload = wl.load_csv(
            args.trace,
            time_scale=args.time_scale,
            jitter_s=args.jitter,
            seed=args.seed,
            max_duration_s=args.duration,
        )
    else:
        duration = args.duration or 3600.0
        lengths = wl.Lengths(input_mean=1500, input_cv=1.5, output_mean=300, output_cv=1.0)
        rate = args.rate
        kind = args.generate or "bursty"
        if kind == "poisson":
            workload = wl.poisson(rate, duration, lengths, seed=args.seed)
        elif kind == "bursty":
            workload = wl.bursty(rate * 0.55, rate * 2.78, duration, lengths=lengths, seed=args.seed)
        elif kind == "diurnal":
            workload = wl.diurnal(rate * 1.6, duration, day_s=duration, lengths=lengths, seed=args.seed)
        else:
            workload = wl.flash_crowd(rate * 0.6, rate * 3.6, duration, lengths=lengths, seed=args.seed)
    if args.rate_scale != 1.0:
        workload = workload.amplified(args.rate_scale, seed=args.seed)
    return workload


def _policies(args, spec, profile, sim_probe) -> list[tuple[str, float | None]]:
    from tokenscale.sim.autoscalers import POLICY_NAMES

    wanted = list(args.policy or [])
    if args.compare:
        wanted += [name for name in POLICY_NAMES if name not in {w.split("=")[0] for w in wanted}]
    if not wanted:
        wanted = ["tokenscale"]
    chosen = []
    for item in wanted:
        name, _, value = item.partition("=")
        if name not in POLICY_NAMES:
            raise SystemExit(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
        chosen.append((name, float(value) if value else None))
    return chosen


def default_target(name: str, spec, profile, sim) -> float:
    """Each policy's target as a user would set it from the same spec."""
    scaling = spec.autoscaling
    if name in ("tokenscale", "hpa"):
        return scaling.target_tokens_per_second_per_replica
    if name == "keda":
        return scaling.target_queue_depth_per_replica
    if name == "kpa":  # Knative's defaults: container-concurrency-target-default 100 x 70% utilisation
        return 70.0
    if name == "static":
        return float(scaling.max_replicas if scaling.enabled else spec.replicas)
    return 0.8  # oracle utilisation


def run(args) -> int:
    from rich.console import Console

    from tokenscale.api import SpecError
    from tokenscale.sim.autoscalers import make_autoscaler
    from tokenscale.sim.plot import plot_results
    from tokenscale.sim.profiles import get_profile
    from tokenscale.sim.prometheus import MetricsConfig
    from tokenscale.sim.simulator import SimConfig, Simulation

    console = Console(stderr=True)
    try:
        spec = load_spec(args.spec)
        workload = _workload(args)
        profile = get_profile(args.profile)
    except (SpecError, ValueError, OSError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    changes = {"max_batch": spec.engine.max_batch_size, "gpus_per_replica": max(1, spec.resources.gpus)}
    if args.spec is None:
        changes.pop("max_batch")
    if args.startup is not None:
        changes["startup_s"] = args.startup
        changes["startup_spread_s"] = min(profile.startup_spread_s, args.startup)
    price = args.gpu_price if args.gpu_price is not None else spec.cost_per_gpu_hour
    if price is not None:
        changes["gpu_price_per_hour"] = price
    profile = profile.with_overrides(**changes)
    config = SimConfig(
        ttft_target_s=args.ttft_target,
        seed=args.seed,
        metrics=MetricsConfig(scrape_interval_s=args.scrape_interval),
    )
    scaling = spec.autoscaling
    if not scaling.enabled:
        console.print("autoscaling is disabled in the spec: simulating spec.replicas as a static count")
    probe = Simulation(workload, profile, config)
    results = []
    for name, target in _policies(args, spec, profile, probe):
        if not scaling.enabled and name == "tokenscale":
            name, target = "static", float(spec.replicas)
        target = default_target(name, spec, profile, probe) if target is None else target
        autoscaler = make_autoscaler(name, target, scaling)
        if name == "tokenscale":
            autoscaler.interval_s = args.tick
        console.print(f"simulating {name} ({target:g}) on {workload.name}: {len(workload):,} requests ...")
        results.append(Simulation(workload, profile, config).run(autoscaler))
    if args.plot:
        plot_results(results, args.plot, title=f"{workload.name} on {profile.name}")
        console.print(f"plot written to {args.plot}")
    if args.json:
        payload = json.dumps(
            {
                "trace": workload.name,
                "profile": profile.name,
                "peak_to_mean": round(workload.peak_to_mean(), 3),
                "reference_capacity_tokens_per_s": round(probe.reference_capacity_tps, 1),
                "results": [json_safe(r.to_dict()) for r in results],
            },
            indent=2,
        )
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
    if not args.json or args.json != "-":
        out = Console()
        if not out.is_terminal:
            out = Console(width=150)
        out.print(results_table(results, probe))
    return 0


def json_safe(value):
    """JSON has no NaN: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def results_table(results, probe):
    from rich.table import Table

    target = results[0].ttft_target_s if results else 0
    trace = probe.trace
    table = Table(
        title=f"{trace.name}: {len(trace):,} requests, {trace.duration_s / 60:.0f} min, "
        f"1-min peak/mean {trace.peak_to_mean():.2f}; one replica saturates at "
        f"{probe.reference_capacity_tps:,.0f} tok/s",
        caption=f"SLO: TTFT <= {target:g} s + the request's own prefill",
    )
    for column in ("policy", "target", "GPU-h", "within SLO", "TTFT p50", "p95", "p99", "wait mean",
                   "dropped", "scale events", "reversals", "$/1M tok"):
        table.add_column(column, justify="left" if column in ("policy", "target") else "right")
    for r in results:
        main = next(iter(v for k, v in r.parameters.items() if k != "metric"), "")
        target = f"{main:g}" if isinstance(main, float) else str(main)
        table.add_row(
            r.policy, target, f"{r.gpu_hours:.2f}", f"{r.slo_attainment:.2%}", f"{r.ttft_p50_s:.2f}s",
            f"{r.ttft_p95_s:.2f}s", f"{r.ttft_p99_s:.2f}s", f"{r.queue_wait_mean_s:.2f}s", str(r.dropped),
            str(r.scale_events), str(r.reversals), f"{r.cost_per_million_tokens:.3f}",
        )
    return table

