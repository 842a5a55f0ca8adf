"""Progress while the sweep runs: a rich progress bar on a terminal when rich is installed, plain
lines otherwise (rich is optional; it is imported only here, and only when it is used)."""

from __future__ import annotations

import sys
from typing import TextIO

from .search import PASS, Point


def describe(point: Point, outcome: str) -> str:
    itl = f"{point.itl_s * 1000:.1f} ms" if point.itl_s is not None else "-"
    verdict = "meets the SLO" if outcome == PASS else f"fails ({outcome}{', cut short' if point.cut_short else ''})"
    return (f"{point.rate:.3g} req/s: {point.tokens_per_second:,.0f} tok/s, TTFT {_seconds(point.ttft_s)}, "
            f"ITL {itl}, errors {point.errors}/{point.requests}, queue {point.waiting:g}: {verdict}")


def _seconds(value: float) -> str:
    return f"{value:.3f} s" if value == value and value != float("inf") else "inf"


class Progress:
    """Plain lines on a stream."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr

    def note(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start_step(self, index: int, rate: float, phase: str, requests: int) -> None:
        self.note(f"step {index + 1} ({phase}): {requests} requests at {rate:.3g} req/s ...")

    def advance(self, done: int) -> None:
        pass

    def end_step(self, point: Point, outcome: str) -> None:
        self.note(f"  {describe(point, outcome)}")

    def close(self) -> None:
        pass


class RichProgress(Progress):
    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        super().__init__(console.file)
        self.console = console
        self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=console, transient=True)
        self.bar.start()
        self.task = None

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def start_step(self, index: int, rate: float, phase: str, requests: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(f"step {index + 1} ({phase}) {rate:.3g} req/s", total=requests)

    def advance(self, done: int) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=done)

    def end_step(self, point: Point, outcome: str) -> None:
        self.note(describe(point, outcome))

    def close(self) -> None:
        self.bar.stop()


def make_progress(plain: bool = False) -> Progress:
    """A bar when stderr is a terminal and rich is importable; plain lines otherwise."""
    if not plain and sys.stderr.isatty():
        try:
            from rich.console import Console
        except ImportError:
            return Progress()
        return RichProgress(Console(stderr=True))
    return Progress()
