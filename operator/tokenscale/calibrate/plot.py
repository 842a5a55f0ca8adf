"""The latency-throughput curve of a calibration (matplotlib, imported only when drawing)."""

from __future__ import annotations

import math
from pathlib import Path

from .search import PASS, Search, Suggestion


def plot_curve(search: Search, suggestion: Suggestion, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slo = search.slo
    order = sorted(range(len(search.points)), key=lambda i: search.points[i].rate)
    points = [search.points[i] for i in order]
    verdicts = [search.verdicts[i] for i in order]
    figure, (ttft_axis, itl_axis) = plt.subplots(1, 2, figsize=(11, 4.2))

    per_request = max((p.output_tokens for p in points), default=0.0) or 1.0  # a step with no answer has none

    def offered(point) -> float:  # tokens/s asked for: grows with the rate, unlike what was delivered
        return point.rate * (point.output_tokens or per_request)

    def draw(axis, values, target, label):
        finite = [(offered(p), v) for p, v in zip(points, values, strict=True) if v is not None
                  and math.isfinite(v)]
        if finite:
            axis.plot(*zip(*finite, strict=True), color="#888888", lw=1, zorder=1)
        known = [v for v in values if v is not None and math.isfinite(v)] + ([target] if target else [])
        beyond = 2 * max(known) if known else 1.0  # where steps with no finite percentile are drawn
        missed = False
        for point, value, outcome in zip(points, values, verdicts, strict=True):
            if value is None:
                continue
            if not math.isfinite(value):
                axis.scatter(offered(point), beyond, zorder=2, s=40, color="#d62728", marker="^",
                             label=None if missed else "missed (failed or cut short)")
                missed = True
                continue
            axis.scatter(offered(point), value, zorder=2, s=28,
                         color="#2ca02c" if outcome == PASS else "#d62728",
                         marker="o" if outcome == PASS else "x")
        if target is not None:
            axis.axhline(target, color="#1f77b4", ls="--", lw=1, label=f"target {target:g} s")
        for special, style, name in ((suggestion.knee, dict(s=160, facecolors="none", edgecolors="#ff7f0e",
                                                                 linewidths=1.6), "knee"),
                                     (suggestion.chosen, dict(s=220, marker="*", color="#1f77b4"), "chosen")):
            if special is None:
                continue
            value = values[points.index(special)] if special in points else None
            if value is not None and math.isfinite(value):
                axis.scatter(offered(special), value, zorder=3, label=name, **style)
        axis.set_xlabel("offered load (generated tokens/s asked of one replica)")
        axis.set_ylabel(label)
        axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
        axis.legend(loc="best", fontsize=8)

    p = f"p{slo.percentile:g}"
    draw(ttft_axis, [pt.ttft_s for pt in points], slo.ttft_s, f"TTFT {p} (s)")
    draw(itl_axis, [pt.itl_s for pt in points], slo.itl_s, f"ITL {p} (s)")
    ttft_axis.set_title("time to first token: green passes, red fails")
    itl_axis.set_title("inter-token latency")
    if suggestion.target_tokens_per_second is not None:
        figure.suptitle(f"targetTokensPerSecondPerReplica {suggestion.target_tokens_per_second:g}, "
                        f"targetQueueDepthPerReplica {suggestion.target_queue_depth:g}")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
