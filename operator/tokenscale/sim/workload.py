"""Request workloads: a trace CSV replayed with time scaling and jitter, or a seeded generator.

A workload is three aligned arrays sorted by arrival time. Everything is numpy so a day of
requests loads in milliseconds; the simulator walks it once.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CSV_COLUMNS = ("timestamp_s", "input_tokens", "output_tokens")

# The daily load shape of the generator `diurnal`: hourly mean rate / daily mean rate over the
# first day of ServeGen's language m-small profile (Xiang et al., arXiv:2505.09999), 00:00 to 23:00.
SERVEGEN_HOURLY_SHAPE = (
    0.80, 0.63, 0.59, 0.60, 0.57, 0.64, 0.72, 0.78, 0.86, 1.08, 1.00, 0.89,
    0.82, 0.81, 1.00, 1.07, 1.10, 1.15, 1.19, 1.44, 1.75, 1.71, 1.55, 1.22,
)  # fmt: skip


@dataclass(frozen=True)
class Workload:
    name: str
    arrival_s: np.ndarray  # float64, sorted, seconds from the start
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64, >= 1

    def __post_init__(self) -> None:
        if not (len(self.arrival_s) == len(self.input_tokens) == len(self.output_tokens)):
            raise ValueError("arrival_s, input_tokens and output_tokens must have the same length")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def peak_to_mean(self, window_s: float = 60.0) -> float:
        """Peak over mean of the request rate counted in fixed windows (1 minute by default)."""
        if len(self) == 0:
            return 0.0
        bins = max(1, math.ceil((self.duration_s + 1e-9) / window_s))
        counts = np.bincount((self.arrival_s // window_s).astype(np.int64), minlength=bins)[:bins]
        return float(counts.max() / counts.mean())

    def amplified(self, factor: float, *, jitter_s: float = 1.0, seed: int = 0) -> Workload:
        """The same traffic shape at `factor` times the rate: each request becomes floor(factor)
        copies (one more with probability of the fraction), each copy shifted by a uniform jitter
        in [0, jitter_s). Minute-scale peaks and the length mix are kept; only the volume grows,
        so a trace recorded on one GPU can load a fleet."""
        if factor <= 0:
            raise ValueError("factor must be positive")
        rng = np.random.default_rng(seed)
        copies = np.floor(factor).astype(np.int64) + (rng.uniform(0, 1, len(self)) < factor % 1)
        index = np.repeat(np.arange(len(self)), copies)
        arrivals = self.arrival_s[index] + rng.uniform(0.0, jitter_s, len(index)) * (copies[index] > 1)
        return _finish(f"{self.name}-x{factor:g}", arrivals, self.input_tokens[index], self.output_tokens[index])

    def with_warmup(self, warmup_s: float) -> Workload:
        """The trace's last `warmup_s`, then the whole trace: the simulator replays that tail first,
        unmeasured, so every policy has its metric windows and history filled when the measured part
        begins at `warmup_s` (a live service has been running before any hour one looks at). The
        trace is taken as one period of its traffic (its last arrival falls on the next period's
        first): the warm-up flows into the start as the end of a day flows into the next, no burst of
        the trace's first minutes is replayed just before it, and a trace shorter than the warm-up
        is repeated to fill it."""
        period = self.duration_s
        if warmup_s <= 0:
            return self
        if period <= 0:  # every request at t = 0: no traffic to replay, a quiet warm-up
            return Workload(self.name, self.arrival_s + warmup_s, self.input_tokens, self.output_tokens)
        copies = math.ceil(warmup_s / period)
        one = self.slice(0.0, period)  # [0, period): the last arrival is the next copy's first
        looped = np.concatenate([one.arrival_s + i * period for i in range(copies)])
        keep = looped >= copies * period - warmup_s
        repeat = np.tile(np.arange(len(one)), copies)[keep]
        return Workload(
            self.name,
            np.concatenate([looped[keep] - (copies * period - warmup_s), self.arrival_s + warmup_s]),
            np.concatenate([one.input_tokens[repeat], self.input_tokens]),
            np.concatenate([one.output_tokens[repeat], self.output_tokens]),
        )

    def slice(self, start_s: float, end_s: float) -> Workload:
        """Requests arriving in [start_s, end_s), re-based to start at 0."""
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s])
        return Workload(
            self.name,
            self.arrival_s[lo:hi] - start_s,
            self.input_tokens[lo:hi],
            self.output_tokens[lo:hi],
        )


def _finish(name: str, arrivals: np.ndarray, inputs: np.ndarray, outputs: np.ndarray) -> Workload:
    order = np.argsort(arrivals, kind="stable")
    return Workload(
        name,
        np.asarray(arrivals, dtype=np.float64)[order],
        np.maximum(np.asarray(inputs, dtype=np.int64)[order], 1),
        np.maximum(np.asarray(outputs, dtype=np.int64)[order], 1),
    )


def load_csv(
    path: str | Path,
    *,
    time_scale: float = 1.0,
    jitter_s: float = 0.0,
    seed: int = 0,
    max_duration_s: float | None = None,
) -> Workload:
    """Read `timestamp_s,input_tokens,output_tokens` (a header row is required).

    `time_scale` stretches time: 0.5 replays the trace twice as fast (double the rate).
    `jitter_s` spreads each arrival uniformly over [t, t + jitter_s): traces recorded with
    coarse timestamps (Mooncake's steps of about 3 s) would otherwise arrive in lumps.
    """
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = [column.strip() for column in next(reader, [])]
        missing = [column for column in CSV_COLUMNS if column not in header]
        if missing:
            raise ValueError(f"{path}: the header must name {', '.join(CSV_COLUMNS)}; missing {missing}")
    table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=[header.index(c) for c in CSV_COLUMNS], ndmin=2)
    if table.size == 0:
        raise ValueError(f"{path}: no requests")
    arrivals = (table[:, 0] - table[:, 0].min()) * time_scale
    if jitter_s > 0:
        arrivals = arrivals + np.random.default_rng(seed).uniform(0.0, jitter_s, len(arrivals))
    workload = _finish(path.stem, arrivals, table[:, 1], table[:, 2])
    if max_duration_s is not None:
        workload = workload.slice(0.0, max_duration_s)
    return workload


# --- generators -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lengths:
    """Lognormal request lengths, given by their mean and coefficient of variation, clipped."""

    input_mean: float = 1000.0
    input_cv: float = 1.0
    output_mean: float = 250.0
    output_cv: float = 1.0
    max_input: int = 32_000
    max_output: int = 4_000

    def sample(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        return (
            _lognormal(rng, self.input_mean, self.input_cv, count, self.max_input),
            _lognormal(rng, self.output_mean, self.output_cv, count, self.max_output),
        )


def _lognormal(rng: np.random.Generator, mean: float, cv: float, count: int, cap: int) -> np.ndarray:
    sigma = math.sqrt(math.log1p(cv * cv))
    mu = math.log(mean) - sigma * sigma / 2
    return np.clip(np.rint(rng.lognormal(mu, sigma, count)), 1, cap).astype(np.int64)


def _poisson_arrivals(rng: np.random.Generator, rate_fn, duration_s: float, peak_rate: float) -> np.ndarray:
    """Arrivals of a Poisson process with rate rate_fn(t) <= peak_rate, by thinning."""
    expected = int(peak_rate * duration_s * 1.2) + 100
    gaps = rng.exponential(1.0 / peak_rate, expected)
    times = np.cumsum(gaps)
    while times[-1] < duration_s:  # rare: draw more
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / peak_rate, expected))])
    times = times[times < duration_s]
    keep = rng.uniform(0.0, peak_rate, len(times)) < rate_fn(times)
    return times[keep]


def poisson(rate_rps: float, duration_s: float, lengths: Lengths = Lengths(), seed: int = 0) -> Workload:
    """Steady load: Poisson arrivals at a constant rate."""
    rng = np.random.default_rng(seed)
    arrivals = _poisson_arrivals(rng, lambda t: np.full_like(t, rate_rps), duration_s, rate_rps)
    return _finish(f"poisson-{rate_rps:g}rps", arrivals, *lengths.sample(rng, len(arrivals)))


def bursty(
    low_rps: float,
    high_rps: float,
    duration_s: float,
    *,
    on_s: float = 120.0,
    off_s: float = 480.0,
    lengths: Lengths = Lengths(),
    seed: int = 0,
) -> Workload:
    """On/off load: `high_rps` for on_s seconds, then `low_rps` for off_s seconds, repeated.
    The on-periods start at random offsets inside each cycle so no policy can learn the phase."""
    rng = np.random.default_rng(seed)
    cycle = on_s + off_s
    starts = np.arange(0.0, duration_s, cycle) + rng.uniform(0.0, off_s, math.ceil(duration_s / cycle))

    def rate(t: np.ndarray) -> np.ndarray:
        index = np.clip((t // cycle).astype(np.int64), 0, len(starts) - 1)
        on = (t >= starts[index]) & (t < starts[index] + on_s)
        return np.where(on, high_rps, low_rps)

    arrivals = _poisson_arrivals(rng, rate, duration_s, max(high_rps, low_rps))
    return _finish(f"bursty-{low_rps:g}-{high_rps:g}rps", arrivals, *lengths.sample(rng, len(arrivals)))


def diurnal(
    peak_rps: float,
    duration_s: float,
    *,
    day_s: float = 86_400.0,
    shape: tuple[float, ...] | np.ndarray = SERVEGEN_HOURLY_SHAPE,
    lengths: Lengths = Lengths(),
    seed: int = 0,
) -> Workload:
    """A daily shape (hourly points, linearly interpolated, periodic) scaled so its peak is
    `peak_rps`. `day_s` compresses a day: 3600 replays a whole day in one hour."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(shape, dtype=np.float64)
    shape = shape / shape.max() * peak_rps
    points = len(shape)

    def rate(t: np.ndarray) -> np.ndarray:
        position = (t % day_s) / day_s * points
        index = position.astype(np.int64) % points
        frac = position - np.floor(position)
        return shape[index] * (1 - frac) + shape[(index + 1) % points] * frac

    arrivals = _poisson_arrivals(rng, rate, duration_s, peak_rps)
    return _finish(f"diurnal-{peak_rps:g}rps", arrivals, *lengths.sample(rng, len(arrivals)))


def flash_crowd(
    base_rps: float,
    peak_rps: float,
    duration_s: float,
    *,
    start_s: float | None = None,
    ramp_s: float = 30.0,
    hold_s: float = 300.0,
    decay_s: float = 300.0,
    lengths: Lengths = Lengths(),
    seed: int = 0,
) -> Workload:
    """Steady `base_rps`, then a crowd: a ramp to `peak_rps` in ramp_s, hold, exponential decay."""
    rng = np.random.default_rng(seed)
    start = duration_s / 3 if start_s is None else start_s

    def rate(t: np.ndarray) -> np.ndarray:
        ramp = np.clip((t - start) / ramp_s, 0.0, 1.0)
        after = np.maximum(t - start - ramp_s - hold_s, 0.0)
        surge = (peak_rps - base_rps) * ramp * np.exp(-after / decay_s)
        return base_rps + np.where(t >= start, surge, 0.0)

    arrivals = _poisson_arrivals(rng, rate, duration_s, max(peak_rps, base_rps))
    return _finish(f"flash-crowd-{base_rps:g}-{peak_rps:g}rps", arrivals, *lengths.sample(rng, len(arrivals)))


def sparse_sessions(
    sessions_per_hour: float,
    duration_s: float,
    *,
    requests_per_session: tuple[int, int] = (3, 12),
    think_time_s: tuple[float, float] = (10.0, 60.0),
    lengths: Lengths = Lengths(),
    seed: int = 0,
) -> Workload:
    """A service used a few times an hour: sessions start as a Poisson process; each is a short
    conversation (a uniform number of requests, a uniform think time between them). The traffic
    scale to zero is for: long silences, and each session's first request meets a cold service."""
    rng = np.random.default_rng(seed)
    rate = sessions_per_hour / 3600.0
    starts = _poisson_arrivals(rng, lambda t: np.full_like(t, rate), duration_s, rate)
    times: list[float] = []
    for start in starts:
        t = float(start)
        for _ in range(int(rng.integers(requests_per_session[0], requests_per_session[1] + 1))):
            if t >= duration_s:
                break
            times.append(t)
            t += float(rng.uniform(*think_time_s))
    arrivals = np.sort(np.asarray(times, dtype=np.float64))
    return _finish(f"sparse-{sessions_per_hour:g}sessions-per-hour", arrivals, *lengths.sample(rng, len(arrivals)))
