"""`tokenscale bench autoscaling`: every policy's cost at the SLO on every trace, in one run."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

DESCRIPTION = """\
For each trace, tune each policy's main target (hpa: tokens/s per pod; keda: queued requests
per pod; kpa: concurrency per pod; static: replicas; oracle: utilisation; tokenscale:
targetTokensPerSecondPerReplica and burst headroom) and report the GPU-hours each needs to keep
>= 99% of requests within the TTFT target, as a ratio to the best baseline and to the oracle.
Beside them, tokenscale with one setting for every trace, untuned: its shipped defaults, and
learned capacity started from half and twice the true capacity (ratio to the tuned tokenscale).
--startup-sweep: tuned tokenscale on the bursty traces at replica startups of 5-90 s, against
the oracle.
Runs the request traces of ../shared/traces (beside the repository) when present, and the
generated traces (poisson, bursty, diurnal, flash-crowd) always.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("suite", choices=("autoscaling",), help="the benchmark to run")
    parser.add_argument("--trace", action="append", default=[], metavar="CSV",
                        help="a request trace (repeatable); replaces the shared traces")
    parser.add_argument("--traces-dir", metavar="DIR", help="where the shared traces are (default: ../shared/traces)")
    parser.add_argument("--profile", default="h100-llama-8b", help="replica model (default h100-llama-8b)")
    parser.add_argument("--policy", action="append", metavar="NAME", help="only these policies (repeatable)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--seeds", type=_positive, default=None,
                        help="cluster seeds per setting (replica startup times drawn that many ways), their "
                        "requests pooled (default 3; 1 with --quick)")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown (for docs)")
    parser.add_argument("--startup-sweep", action="store_true",
                        help="instead: tuned tokenscale on the bursty traces (azure2023_code_1h, bursty, flash-crowd) "
                        "at replica startups of 5, 15, 30, 60 and 90 s, as a ratio to the oracle")
    parser.add_argument("--quick", action="store_true",
                        help="10-minute generated traces, a coarse grid, no trace files: for tests")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def repo_traces_dir() -> Path | None:
    """../shared/traces beside the repository root (or beside the working directory), as a path
    relative to the working directory when it can be (it is written into the report)."""
    candidates = [Path(__file__).resolve().parents[3], Path.cwd()]
    for root in candidates:
        if (root / "pyproject.toml").exists():
            path = root.parent / "shared" / "traces"
            if path.is_dir():
                return Path(os.path.relpath(path))
    return None


def run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tokenscale.sim.bench import (
        BENCH_POLICIES,
        BURSTY_TRACES,
        GENERATED,
        SEEDS,
        STARTUP_SWEEP_S,
        TraceSpec,
        default_traces,
        run_benchmark,
        startup_sweep,
    )
    from tokenscale.sim.simulator import SimConfig

    console = Console() if Console().is_terminal else Console(width=110)
    policies = args.policy or list(BENCH_POLICIES)
    unknown = [p for p in policies if p not in BENCH_POLICIES]
    if unknown:
        console.print(f"[red]unknown policies {unknown}; known: {', '.join(BENCH_POLICIES)}")
        return 2
    if args.quick:
        traces = [TraceSpec(name, duration_s=480.0, mean_replicas=2.5) for name in GENERATED]
        traces = [TraceSpec(str(t), duration_s=480.0, mean_replicas=2.5) for t in args.trace] + traces
    else:
        shared = Path(args.traces_dir) if args.traces_dir else repo_traces_dir()
        traces = default_traces(shared, args.trace)
    if args.startup_sweep:
        traces = [t for t in traces if Path(t.name).stem in BURSTY_TRACES]
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]autoscaling bench"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        sweep = STARTUP_SWEEP_S[:2] if args.quick else STARTUP_SWEEP_S
        total = len(traces) * (len(sweep) + 2) if args.startup_sweep else len(traces) * len(policies)
        task = progress.add_task("", total=total)

        def done(trace: str, policy: str) -> None:
            progress.update(task, advance=1, description=f"{Path(trace).stem} / {policy}")

        config = SimConfig(warmup_s=60.0) if args.quick else SimConfig()
        seeds = args.seeds or (1 if args.quick else SEEDS)
        if args.startup_sweep:
            rows = startup_sweep(traces, startups=sweep, profile_name=args.profile, config=config,
                                 workers=args.workers, quick=args.quick, seeds=seeds, on_done=done)
            report = {"startup_sweep": rows, "settings": {"profile": args.profile, "cluster_seeds": seeds}}
        else:
            report = run_benchmark(
                traces,
                profile_name=args.profile,
                policies=policies,
                config=config,
                workers=args.workers,
                quick=args.quick,
                seeds=seeds,
                on_done=done,
            )
    report["settings"]["wall_seconds"] = round(time.monotonic() - started, 1)
    if args.startup_sweep:
        console.print(sweep_markdown(report["startup_sweep"]))
    else:
        console.print(report_table(report))
    if args.json:
        from tokenscale.commands.simulate import json_safe

        Path(args.json).write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
        console.print(f"report written to {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(
            sweep_markdown(report["startup_sweep"]) if args.startup_sweep else markdown_table(report))
        console.print(f"table written to {args.markdown}")
    return 0


def markdown_table(report: dict) -> str:
    """The report as a Markdown table, with each policy's chosen run's details."""
    details = {(d["trace"], d["policy"]): d for d in report.get("details", [])}
    lines = [
        "| trace | 1-min peak/mean | policy | GPU-h at SLO | within SLO | worst seed | vs best baseline "
        "| vs oracle | vs tuned tokenscale | setting | TTFT p99 | scale events |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]

    def fmt(value, pattern):
        return "–" if value is None else pattern.format(value)

    for trace in report["traces"]:
        name = Path(trace["trace"]).stem
        for index, row in enumerate(trace["policies"]):
            detail = details.get((trace["trace"], row["policy"]), {})
            target = ", ".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in detail.get("parameters", {}).items()
                if k in ("target_per_pod", "target_concurrency", "replicas", "utilisation",
                         "target_tokens_per_second_per_replica", "burst_headroom", "burst_baseline",
                         "learned_tokens_per_second_per_replica")
            )
            fixed = row.get("ratio_to_tokenscale") is not None or row["policy"].startswith("tokenscale-")
            if fixed:  # one setting, not tuned: its cost is shown whether it met the SLO or not
                target = "start " + target if "learned" in target else "defaults"
                cost = f"{row['gpu_hours']:.2f}" + ("" if detail.get("met_slo") else " (missed)")
            else:
                cost = fmt(row["gpu_hours_at_slo"], "{:.2f}")
                if not detail.get("met_slo", True):
                    target += " (closest)"
            policy = f"**{row['policy']}**" if row["policy"].startswith("tokenscale") else row["policy"]
            lines.append(
                f"| {name if index == 0 else ''} | {trace['peak_to_mean'] if index == 0 else ''} | {policy} "
                f"| {cost} | {row['slo_attainment']:.2%} "
                f"| {fmt(detail.get('worst_seed_attainment'), '{:.2%}')} "
                f"| {fmt(row['ratio_to_best_baseline'], '{:.2f}x')} | {fmt(row['ratio_to_oracle'], '{:.2f}x')} "
                f"| {fmt(row.get('ratio_to_tokenscale'), '{:.3f}x')} "
                f"| {target} | {fmt(detail.get('ttft_p99_s'), '{:.2f} s')} | {detail.get('scale_events', '')} |"
            )
    return "\n".join(lines) + "\n"


def sweep_markdown(rows: list[dict]) -> str:
    """The startup sweep as a Markdown table."""
    lines = [
        "| trace | replica startup | tokenscale GPU-h at SLO | within SLO | oracle GPU-h | vs oracle | static GPU-h "
        "| vs static |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(value, pattern):
        return "–" if value is None else pattern.format(value)

    for row in rows:
        lines.append(
            f"| {Path(row['trace']).stem} | {row['startup_s']:g} ± {row['startup_s'] / 3:.3g} s "
            f"| {fmt(row['tokenscale_gpu_hours'], '{:.2f}')} | {row['slo_attainment']:.2%} "
            f"| {fmt(row['oracle_gpu_hours'], '{:.2f}')} | {fmt(row['ratio_to_oracle'], '{:.2f}x')} "
            f"| {fmt(row['static_gpu_hours'], '{:.2f}')} | {fmt(row['ratio_to_static'], '{:.2f}x')} |"
        )
    return "\n".join(lines) + "\n"


def report_table(report: dict):
    from rich.table import Table

    settings = report["settings"]
    table = Table(
        title=f"GPU-hours at the SLO ({settings['slo']}), profile {settings['profile']}",
        caption="ratio < 1 is cheaper; '-' = the SLO was not reached within 2x the cost of holding the peak",
    )
    for column in ("trace", "peak/mean", "policy", "GPU-h at SLO", "within SLO", "vs best baseline", "vs oracle"):
        table.add_column(column, justify="left" if column in ("trace", "policy") else "right")
    for trace in report["traces"]:
        name = Path(trace["trace"]).stem
        for index, row in enumerate(trace["policies"]):
            def fmt(value, pattern):
                return "-" if value is None else pattern.format(value)

            table.add_row(
                name if index == 0 else "",
                f"{trace['peak_to_mean']:.2f}" if index == 0 else "",
                ("[bold]" if row["policy"] == "tokenscale" else "") + row["policy"],
                fmt(row["gpu_hours_at_slo"], "{:.2f}"),
                f"{row['slo_attainment']:.2%}",
                fmt(row["ratio_to_best_baseline"], "{:.2f}x"),
                fmt(row["ratio_to_oracle"], "{:.2f}x"),
            )
        table.add_section()
    return table
