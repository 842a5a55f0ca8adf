"""Scale to zero with the activator vs keeping one replica, on sparse traffic, in the simulator.

A service used a few sessions an hour (sim.workload.sparse_sessions: 3-12 requests a session,
10-60 s apart), replayed through tokenscale's policy twice, side by side on the same trace and
the same cluster seeds: minReplicas 1, and minReplicas 0 with the activator (held requests, the
wake-up at once, the activation signal from the wake-up annotation). Printed per sessions-per-hour:
GPU-hours (and their ratio), the fraction of requests that were held, the TTFT of the held ones
(they wait for a cold start), the TTFT p99 of all, and the share within the TTFT target.

    python bench/scale_to_zero.py [--hours 24] [--sessions 1 4 12] [--seeds 3] [--profile h100-llama-8b]
"""

from __future__ import annotations

import argparse

from tokenscale.api.models import AutoscalingSpec
from tokenscale.sim.activator import compare
from tokenscale.sim.profiles import get_profile
from tokenscale.sim.workload import sparse_sessions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--sessions", type=float, nargs="+", default=[1.0, 4.0, 12.0], help="sessions per hour")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--profile", default="h100-llama-8b")
    parser.add_argument("--scale-to-zero-after", type=int, default=300, metavar="S")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    spec = AutoscalingSpec.model_validate({
        "minReplicas": 0, "maxReplicas": 4, "targetTokensPerSecondPerReplica": 3000,
        "scaleToZeroAfterSeconds": args.scale_to_zero_after, "activation": {"activator": True}})
    print(f"profile {profile.name} (cold start {profile.startup_s:g} +- {profile.startup_spread_s:g} s, "
          f"TTFT target {profile.ttft_target_s:g} s), {args.hours:g} h, {args.seeds} cluster seeds, "
          f"scaleToZeroAfterSeconds {args.scale_to_zero_after}")
    header = (f"{'sessions/h':>10} {'setting':<27} {'requests':>8} {'GPU-h':>7} {'ratio':>6} {'held':>6} "
              f"{'held TTFT p50':>13} {'held p99':>9} {'TTFT p99':>9} {'in SLO':>7} {'dropped':>7}")
    print(header)
    for rate in args.sessions:
        workload = sparse_sessions(rate, args.hours * 3600, seed=1)
        (keep, _), (zero, held) = compare(workload, profile, spec, seeds=args.seeds)
        for result, stats in ((keep, None), (zero, held)):
            ratio = result.gpu_hours / keep.gpu_hours if keep.gpu_hours else float("nan")
            p50 = f"{stats.held_ttft_p50_s:.1f}s" if stats else "-"
            p99 = f"{stats.held_ttft_p99_s:.1f}s" if stats else "-"
            print(f"{rate:>10g} {result.policy:<27} {result.requests // result.seeds:>8} {result.gpu_hours:>7.2f} "
                  f"{ratio:>6.2f} {(stats.held_fraction if stats else 0):>6.1%} {p50:>13} {p99:>9} "
                  f"{result.ttft_p99_s:>8.2f}s {result.slo_attainment:>7.1%} {result.dropped:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
