"""One figure per run: demand against capacity, and replicas, for each policy (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from .results import SimResult


def plot_results(results: list[SimResult], path: str | Path, *, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(results)
    figure, axes = plt.subplots(rows, 1, figsize=(11, 2.6 * rows + 0.6), sharex=True, squeeze=False)
    for axis, result in zip(axes[:, 0], results, strict=True):
        line = result.timeline
        minutes = line["time"] / 60
        axis.fill_between(minutes, line["demand_tps"], color="#bbbbbb", step="pre", label="demand (tokens/s arriving)")
        axis.plot(minutes, line["capacity_tps"], color="#1f77b4", lw=1.4, drawstyle="steps-pre",
                  label="ready capacity (tokens/s)")
        axis.plot(minutes, line["served_tps"], color="#2ca02c", lw=0.8, drawstyle="steps-pre", label="served")
        axis.set_ylabel("tokens/s")
        replicas = axis.twinx()
        replicas.plot(minutes, line["replicas"], color="#d62728", lw=1.2, drawstyle="steps-pre", label="pods (GPU cost)")
        replicas.plot(minutes, line["ready"], color="#ff7f0e", lw=0.8, ls="--", drawstyle="steps-pre", label="ready pods")
        replicas.set_ylabel("replicas")
        replicas.set_ylim(bottom=0)
        axis.set_ylim(bottom=0)
        axis.set_title(
            f"{result.policy}: {result.gpu_hours:.2f} GPU-h, {result.slo_attainment:.2%} within TTFT target, "
            f"p99 TTFT {result.ttft_p99_s:.2f} s, {result.scale_events} scale events, {result.dropped} dropped",
            fontsize=9, loc="left",
        )
        handles = axis.get_legend_handles_labels()[0] + replicas.get_legend_handles_labels()[0]
        labels = axis.get_legend_handles_labels()[1] + replicas.get_legend_handles_labels()[1]
    axes[0, 0].legend(handles, labels, loc="upper right", fontsize=7, ncol=5)
    axes[-1, 0].set_xlabel("minutes")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
