"""The live terminal view of the local loop (rich), and the summary printed at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tokenscale.local.report import DecisionPoint, Sample


class LiveView:
    """Builds one frame from the latest sample; `rich.live.Live` redraws it."""

    def __init__(self, duration: float, service: str, target_per_replica: float) -> None:
        self.service = service
        self.target_per_replica = target_per_replica
        self.progress = Progress(
            TextColumn("[bold]load"),
            BarColumn(bar_width=None),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            expand=True,
        )
        self.task = self.progress.add_task("load", total=duration)
        self.sample: Sample | None = None
        self.decision: DecisionPoint | None = None
        self.counts = {"served": 0, "rejected": 0, "failed": 0}
        self.phase = "starting"

    def update(self, sample: Sample, decision: DecisionPoint | None, counts: dict[str, int]) -> None:
        self.sample, self.decision, self.counts = sample, decision, counts
        self.progress.update(self.task, completed=max(0.0, sample.t))

    def __rich__(self) -> RenderableType:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", justify="right")
        table.add_column()
        s = self.sample
        if s is None:
            table.add_row("phase", self.phase)
        else:
            capacity = s.ready * self.target_per_replica
            table.add_row("phase", self.phase)
            table.add_row("offered load", f"{s.offered_rps:6.1f} req/s   {s.offered_tokens_per_second:7.0f} tokens/s")
            table.add_row(
                "served", f"{s.tokens_per_second:7.0f} tokens/s   (ready capacity at target {capacity:.0f})"
            )
            queue = "-" if s.queue_depth is None else f"{s.queue_depth:.0f}"
            running = "-" if s.running is None else f"{s.running:.0f}"
            table.add_row("queue", f"{queue} waiting, {running} running   ({s.in_flight} in flight at clients)")
            table.add_row(
                "replicas",
                f"[bold]{s.ready}[/] ready / {s.desired} desired"
                + (f"   ({s.existing - s.ready} loading)" if s.existing > s.ready else ""),
            )
            c = self.counts
            table.add_row("requests", f"{c['served']} served, {c['rejected']} rejected (429), {c['failed']} failed")
        d = self.decision
        if d is not None:
            arrow = "↑" if d.to_replicas > d.from_replicas else "↓" if d.to_replicas < d.from_replicas else "="
            table.add_row(
                "last decision",
                f"{arrow} {d.from_replicas} → {d.to_replicas} at {d.t:.0f} s"
                + (f"  [dim]({d.limited_by})[/]" if d.limited_by else ""),
            )
            table.add_row("reason", d.reason or "-")
        title = f"tokenscale demo — InferenceService [bold]{self.service}[/]"
        return Group(Panel(table, title=title, border_style="blue"), self.progress)

    def line(self) -> str:
        """A one-line status for logs when stdout is not a terminal."""
        s = self.sample
        if s is None:
            return self.phase
        decision = ""
        if self.decision is not None:
            decision = f" last decision {self.decision.from_replicas}->{self.decision.to_replicas}: {self.decision.reason}"
        queue = "-" if s.queue_depth is None else f"{s.queue_depth:.0f}"
        return (
            f"t={s.t:5.0f}s offered {s.offered_rps:5.1f} req/s, served {s.tokens_per_second:6.0f} tok/s, "
            f"queue {queue}, replicas {s.ready}/{s.desired}{decision}"
        )


def print_summary(console: Console, summary: dict[str, Any], plot_path: str | None) -> None:
    table = Table(title="tokenscale demo: summary", show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column(justify="right")

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    table.add_row("requests served", str(summary["requests_served"]))
    table.add_row("requests rejected (429)", str(summary["requests_rejected_429"]))
    table.add_row("requests failed", str(summary["requests_failed"]))
    table.add_row("TTFT p50 / p99", f"{seconds(summary['ttft_p50_s'])} / {seconds(summary['ttft_p99_s'])}")
    table.add_row("replica-process-seconds", f"{summary['replica_process_seconds']:.0f}")
    table.add_row("replicas min / max / final", f"{summary['min_replicas']} / {summary['max_replicas']} / {summary['final_replicas']}")
    table.add_row("reaction (load over capacity → scale-up)", seconds(summary["reaction_seconds"]))
    table.add_row("time to ready capacity", seconds(summary["time_to_ready_capacity_seconds"]))
    table.add_row("scale events", str(len(summary["scale_events"])))
    learned = summary.get("learned_tokens_per_second_per_replica")
    if learned is not None:
        calibrated = summary.get("calibrated_tokens_per_second_per_replica")
        table.add_row("capacity per replica: learned / calibrated",
                      f"{learned:,.0f} / {'-' if calibrated is None else f'{calibrated:,.0f}'} tok/s")
    console.print(table)
    for event in summary["scale_events"]:
        console.print(
            f"  t={event['t']:6.1f}s  {event['from_replicas']} → {event['to_replicas']}  "
            f"[dim]{event['limited_by']}[/]  {event['reason']}"
        )
    if plot_path:
        console.print(f"plot: {plot_path}")
