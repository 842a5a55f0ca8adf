"""`tokenscale calibrate`: measure the tokens/s one replica serves within a latency target."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from pathlib import Path

DESCRIPTION = """\
Measure what one replica of a running OpenAI-compatible endpoint (tokenscale's server, vLLM,
SGLang, TGI) serves within a latency target, and suggest targetTokensPerSecondPerReplica and
targetQueueDepthPerReplica. Open-loop Poisson arrivals at increasing rates (doubling, then
bisection) with streaming requests; TTFT and ITL measured from the stream; failed requests are
errors, never throughput. Point it at ONE replica (a pod's port-forward), not at a load balancer.
"""

EPILOG = """\
examples:
  tokenscale calibrate --endpoint http://127.0.0.1:8000/v1 --model llama-8b \\
      --input-tokens 1000 --output-tokens 200 --ttft 2s --itl 100ms --json result.json
  tokenscale calibrate --endpoint http://127.0.0.1:8000/v1 --model llama-8b --trace requests.csv \\
      --ttft 1s --percentile 95 --out profile.yaml --startup 90 --plot curve.png
"""

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?\s*$")


def duration(text: str) -> float:
    """`2s`, `250ms` or plain seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 2s, 250ms, 1.5)")
    value = float(match.group(1)) * (0.001 if match.group(2) == "ms" else 1.0)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--endpoint", required=True, metavar="URL", help="the API base, e.g. http://HOST:PORT/v1")
    parser.add_argument("--model", required=True, help="the served model name")
    lengths = parser.add_mutually_exclusive_group(required=True)
    lengths.add_argument("--trace", metavar="CSV", help="draw request lengths from a trace "
                         "(timestamp_s,input_tokens,output_tokens; its timestamps are not used)")
    lengths.add_argument("--input-tokens", type=_positive_int, metavar="N", help="prompt tokens per request")
    parser.add_argument("--output-tokens", type=_positive_int, metavar="M", help="generated tokens per request")
    parser.add_argument("--ttft", type=duration, required=True, help="TTFT target, e.g. 2s or 500ms")
    parser.add_argument("--itl", type=duration, default=None, help="inter-token latency target, e.g. 100ms")
    parser.add_argument("--percentile", type=float, default=99.0, help="of requests that must meet it (default 99)")
    parser.add_argument("--api", choices=("completions", "chat"), default="completions",
                        help="/v1/completions (default) or /v1/chat/completions")
    parser.add_argument("--api-key", default=None, help="bearer token (default: $TOKENSCALE_API_KEY, $OPENAI_API_KEY)")
    parser.add_argument("--metrics-url", default=None, help="the server's Prometheus metrics (default: the "
                        "endpoint's host + /metrics; '' to read the queue from the client side only)")
    search = parser.add_argument_group("the sweep")
    search.add_argument("--start-rate", type=float, default=None, metavar="RPS",
                        help="first rate (default: 1 / one request's latency alone)")
    search.add_argument("--max-rate", type=float, default=None, metavar="RPS", help="never offer more")
    search.add_argument("--growth", type=float, default=2.0, help="the coarse sweep's factor (default 2)")
    search.add_argument("--resolution", type=float, default=0.1,
                        help="bisect until the failing rate is within this fraction of the passing one (default 0.1)")
    search.add_argument("--max-steps", type=_positive_int, default=14)
    search.add_argument("--step-seconds", type=float, default=30.0, help="arrivals per step span this long (default 30)")
    search.add_argument("--min-requests", type=_positive_int, default=100, help="requests per step at least (default 100)")
    search.add_argument("--warmup-requests", type=int, default=50, metavar="N",
                        help="sent at the first rate before measuring, not counted (default 50; 0: none)")
    search.add_argument("--drain-seconds", type=float, default=60.0,
                        help="after a step's last arrival, cancel what still runs after this long (default 60)")
    search.add_argument("--seed", type=int, default=0)
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="the targets and every measured point as JSON ('-': stdout)")
    out.add_argument("--out", metavar="YAML", help="a replica profile for `tokenscale simulate --profile FILE`")
    out.add_argument("--plot", metavar="PNG", help="the latency-throughput curve, the knee and the chosen point")
    out.add_argument("--startup", type=float, default=None, metavar="S",
                     help="the replica's startup time (pod created to ready), for the profile")
    out.add_argument("--max-batch", type=int, default=None, help="the server's batch limit, for the profile "
                     "(default: the largest running batch seen)")
    out.add_argument("--kv-capacity-tokens", type=int, default=None, help="KV-cache tokens, for the profile "
                     "(default: estimated from the KV-cache use gauge)")
    out.add_argument("--plain", action="store_true", help="progress as plain lines, no bar")


def _lengths(args):
    from tokenscale.calibrate.plan import LengthMix

    if args.trace:
        return LengthMix.from_rows(*_trace_lengths(Path(args.trace)))
    if args.output_tokens is None:
        raise ValueError("--input-tokens needs --output-tokens")
    return LengthMix.fixed(args.input_tokens, args.output_tokens)


def _trace_lengths(path: Path) -> tuple[list[int], list[int]]:
    """The input and output token counts of a trace CSV (the format `tokenscale simulate` reads),
    with the csv module alone: calibrate needs none of the simulator's packages."""
    import csv

    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "input_tokens" not in columns or "output_tokens" not in columns:
            raise ValueError(f"{path}: the header must name input_tokens and output_tokens")
        inputs, outputs = [], []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k}
            try:
                inputs.append(int(float(row["input_tokens"])))
                outputs.append(int(float(row["output_tokens"])))
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: token counts must be numbers") from None
    if not inputs:
        raise ValueError(f"{path}: no requests")
    return inputs, outputs


def _plot_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def run(args) -> int:
    from tokenscale.calibrate.client import Endpoint, EndpointError, LoadClient
    from tokenscale.calibrate.plan import StepConfig
    from tokenscale.calibrate.progress import make_progress
    from tokenscale.calibrate.report import result_dict, summary, table
    from tokenscale.calibrate.search import SearchConfig, Slo, suggest
    from tokenscale.calibrate.session import Calibration, calibrate

    try:
        slo = Slo(ttft_s=args.ttft, itl_s=args.itl, percentile=args.percentile)
        lengths = _lengths(args)
        search_config = SearchConfig(
            growth=args.growth, resolution=args.resolution, max_steps=args.max_steps,
            **({"max_rate": args.max_rate} if args.max_rate else {}),
        )
        step = StepConfig(seconds=args.step_seconds, min_requests=args.min_requests, drain_s=args.drain_seconds,
                          seed=args.seed)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.plot and not _plot_available():  # said before minutes of measuring, not after
        print("error: --plot needs matplotlib: pip install 'tokenscale[sim]'", file=sys.stderr)
        return 2
    endpoint = Endpoint(
        url=args.endpoint, model=args.model, api=args.api,
        api_key=args.api_key or os.environ.get("TOKENSCALE_API_KEY") or os.environ.get("OPENAI_API_KEY") or None,
        metrics_url=args.metrics_url,
    )
    calibration = Calibration(slo=slo, lengths=lengths, search_config=search_config, step=step,
                              start_rate=args.start_rate, warmup_requests=max(0, args.warmup_requests))
    progress = make_progress(plain=args.plain)

    async def main():
        async with LoadClient(endpoint, seed=args.seed) as client:
            return await calibrate(client, calibration, progress)

    try:
        outcome = asyncio.run(main())
    except EndpointError as error:
        progress.close()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.close()
        print("interrupted", file=sys.stderr)
        return 130
    progress.close()
    search = outcome.search
    suggestion = suggest(search)
    out = sys.stderr if args.json == "-" else sys.stdout  # stdout then carries only the JSON
    print(table(search, suggestion), file=out)
    print(file=out)
    print(summary(search, suggestion), file=out)
    extra = {"lengths": {"meanInputTokens": round(lengths.mean_input, 1),
                         "meanOutputTokens": round(lengths.mean_output, 1)},
             "serverGauges": outcome.server_gauges,
             "singleRequestSeconds": outcome.service_time_s}
    if args.out and suggestion.chosen is not None:
        from tokenscale.calibrate.fit import FitOptions, calibration_record, fit_profile
        from tokenscale.sim.profiles import dump_profile

        profile = fit_profile(search, suggestion, FitOptions(
            name=Path(args.out).stem, startup_s=args.startup, max_batch=args.max_batch,
            kv_capacity_tokens=args.kv_capacity_tokens, description=f"{args.model} at {args.endpoint}, calibrated",
        ))
        Path(args.out).write_text(dump_profile(profile, calibration_record(search, suggestion)))
        extra["profile"] = args.out
        print(f"\nprofile written to {args.out} (tokenscale simulate --profile {args.out})", file=out)
    if args.plot:
        from tokenscale.calibrate.plot import plot_curve

        plot_curve(search, suggestion, args.plot)
        print(f"plot written to {args.plot}", file=out)
    if args.json:
        payload = json.dumps(result_dict(search, suggestion, endpoint=args.endpoint, model=args.model, extra=extra),
                             indent=2)
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
    return 0 if suggestion.chosen is not None else 1
