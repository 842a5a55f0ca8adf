"""`tokenscale demo`: the whole system on this machine for a few minutes, watched live.

An emulated Kubernetes API, the real operator, a local kubelet running `tokenscale-server`
processes with a tiny model, a router, a real Prometheus and a load generator. At the end: a
summary, a PNG plot, and with `--json` the summary as JSON. Ctrl-C stops every process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tokenscale.local.demo import DemoConfig

    d = DemoConfig()
    parser.add_argument("--scenario", choices=("ramp", "scale-from-zero"), default="ramp",
                        help="ramp: a surge and its fall (default); scale-from-zero: bursts at zero replicas "
                        "through the activator (docs/scale-to-zero.md)")
    parser.add_argument("--duration", type=float, default=d.duration, metavar="S",
                        help=f"seconds of load (default {d.duration:.0f})")
    parser.add_argument("--trace", type=Path, metavar="CSV",
                        help="replay a request trace (timestamp_s,input_tokens,output_tokens), "
                        "time-compressed onto --duration, instead of the built-in ramp")
    parser.add_argument("--trace-rps", type=float, metavar="RPS",
                        help="thin the trace to this mean request rate (default: one replica's worth on average)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the summary as JSON")
    parser.add_argument("--plot", type=Path, default=d.plot_out, metavar="PNG",
                        help=f"where to draw load, tokens/s, queue and replicas (default {d.plot_out})")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="keep logs, kubeconfig and Prometheus data here (default: a temporary "
                        "directory, removed at the end)")
    parser.add_argument("--model-cache", type=Path, metavar="DIR",
                        help="where the tiny model is built once (default ~/.cache/tokenscale/...)")
    parser.add_argument("--tick-seconds", type=float, default=d.tick_seconds, metavar="S",
                        help=f"the operator's autoscaling tick (default {d.tick_seconds})")
    parser.add_argument("--rate-window", default=d.rate_window, metavar="DURATION",
                        help=f"the operator's short rate() window (default {d.rate_window})")
    parser.add_argument("--max-replicas", type=int, default=d.max_replicas, metavar="N",
                        help=f"the InferenceService's maxReplicas (default {d.max_replicas})")
    parser.add_argument("--target-tokens-per-second", type=float, default=None,
                        metavar="TPS", help="targetTokensPerSecondPerReplica, fixed (default: learned at a 1 s "
                        f"TTFT p99, starting from {d.target_tokens_per_second:.0f}, calibrated on a 2-core machine)")
    parser.add_argument("--scale-down-stabilization", type=int, default=d.scale_down_stabilization,
                        metavar="S", help=f"scaleDown.stabilizationSeconds (default {d.scale_down_stabilization})")
    parser.add_argument("--peak-load", type=float, default=d.peak_load, metavar="X",
                        help=f"the ramp's plateau in replicas' worth of target capacity (default {d.peak_load})")
    parser.add_argument("--settle", type=float, default=d.settle_seconds, metavar="S",
                        help="after the load, wait up to this long for the replicas to return to the minimum")
    parser.add_argument("--no-live", action="store_true", help="no live view: one status line every 10 s")
    parser.add_argument("--verbose", action="store_true", help="log what the runtime does")


def run(args: argparse.Namespace) -> int:
    if args.scenario == "scale-from-zero":
        from tokenscale.local.scale_from_zero import run_cli

        return run_cli(args)
    from rich.console import Console

    from tokenscale.local.demo import DemoConfig
    from tokenscale.local.view import print_summary

    console = Console()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the emulator's request log
    config = DemoConfig(
        duration=args.duration,
        trace=args.trace,
        trace_mean_rps=args.trace_rps,
        json_out=args.json,
        plot_out=args.plot,
        workdir=args.workdir,
        model_cache=args.model_cache,
        tick_seconds=args.tick_seconds,
        rate_window=args.rate_window,
        max_replicas=args.max_replicas,
        target_tokens_per_second=args.target_tokens_per_second or DemoConfig.target_tokens_per_second,
        learned_capacity=args.target_tokens_per_second is None,
        scale_down_stabilization=args.scale_down_stabilization,
        peak_load=args.peak_load,
        settle_seconds=args.settle,
        live=False if args.no_live else None,
    )
    if args.trace is not None and not args.trace.is_file():
        console.print(f"[red]no such trace: {args.trace}")
        return 2
    try:
        summary = asyncio.run(_main(config, console))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process was stopped")
        return 130
    except asyncio.CancelledError:  # SIGTERM
        console.print("[yellow]terminated: every process was stopped")
        return 143
    except Exception as error:  # noqa: BLE001 - reported, and every child is already stopped
        console.print(f"[red]the demo failed: {error}")
        return 1
    print_summary(console, summary, summary.get("plot"))
    if args.json is not None:
        console.print(f"summary: {args.json}")
    return 0


async def _main(config, console) -> dict:
    from rich.live import Live

    from tokenscale.local.demo import Loop
    from tokenscale.local.view import LiveView

    live = config.live if config.live is not None else console.is_terminal
    view = LiveView(config.duration, config.name, config.target_tokens_per_second)
    loop = Loop(config, view)
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    failed = True
    try:
        if live:
            with Live(view, console=console, refresh_per_second=4, transient=False):
                summary = await loop.run()
        else:
            ticker = asyncio.create_task(_status_lines(view))
            try:
                summary = await loop.run()
            finally:
                ticker.cancel()
        failed = False
        return summary
    finally:
        loop.cleanup(keep_workdir=failed)
        if failed and config.workdir is None:
            print(f"logs kept in {loop.workdir}", file=sys.stderr)


async def _status_lines(view) -> None:
    while True:
        await asyncio.sleep(10)
        print(view.line(), flush=True)
