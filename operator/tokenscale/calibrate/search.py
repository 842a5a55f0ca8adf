"""The calibration search, pure: no clock, no network.

A *step* offers Poisson arrivals at one rate; the load client records each request. `step_point`
turns those records into a `Point` (tokens/s, TTFT and ITL at the SLO percentile, errors, the
backlog's growth, the queue). `Search` says which rate to measure next: it doubles the rate
while steps pass (the coarse sweep), and once a step fails it bisects between the highest rate
that passed and the lowest that failed, until the two are within `resolution` of each other.
The best pass is then measured once more (a confirmation); if that fails, the bracket reopens
below it. A step fails when its TTFT (or ITL) percentile misses the SLO, when requests fail, or when it
saturates (requests finish measurably slower than they arrive: the queue grows without bound,
so a longer step would miss any target). `suggest` picks the highest passing point and derives
the autoscaling targets from it; `knee` finds where latency turns up on the measured curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

PASS, TTFT, ITL, ERRORS, SATURATED = "pass", "ttft", "itl", "errors", "saturated"


@dataclass(frozen=True)
class Slo:
    ttft_s: float
    itl_s: float | None = None
    percentile: float = 99.0  # of requests

    def __post_init__(self) -> None:
        if not self.ttft_s > 0:
            raise ValueError("the TTFT target must be positive")
        if self.itl_s is not None and not self.itl_s > 0:
            raise ValueError("the ITL target must be positive")
        if not 0 < self.percentile < 100:
            raise ValueError("the percentile must be between 0 and 100 (exclusive)")


@dataclass(frozen=True)
class RequestSample:
    """One request as the client saw it; times in seconds from the step's start. TTFT counts
    from the *scheduled* arrival, so a client that falls behind shows up as latency."""

    scheduled_at: float
    input_tokens: int
    ok: bool
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    output_tokens: int = 0
    cut: bool = False  # cancelled because the step had already missed its TTFT percentile; not an error

    @property
    def ttft(self) -> float:
        """Failed requests have no TTFT: infinity, so they count against any percentile."""
        if not self.ok or self.first_token_at is None:
            return math.inf
        return self.first_token_at - self.scheduled_at

    @property
    def itl(self) -> float | None:
        """Mean time between this request's output tokens (None with fewer than two)."""
        if not self.ok or self.output_tokens < 2 or self.first_token_at is None or self.last_token_at is None:
            return None
        return (self.last_token_at - self.first_token_at) / (self.output_tokens - 1)


@dataclass(frozen=True)
class GaugeSample:
    """The server's own gauges at one moment (vLLM names or their SGLang/TGI equivalents)."""

    at: float
    waiting: float
    running: float
    kv_usage: float | None = None


@dataclass(frozen=True)
class Point:
    """One measured step."""

    rate: float  # offered requests/s
    requests: int  # sent
    errors: int  # failed: an HTTP error, a broken stream, a timeout
    tokens_per_second: float  # generated tokens/s received (successful requests only), steady window
    ttft_s: float  # TTFT at the SLO percentile (inf when failures reach it)
    itl_s: float | None  # per-request mean inter-token latency at the percentile
    ttft_p50_s: float
    arrival_rate: float  # requests/s that arrived in the steady window
    completion_rate: float  # requests/s that finished in the steady window
    concurrency: float  # mean requests in flight (client side)
    waiting: float  # the queue at the step's 90th percentile in time (server gauge, else client side)
    running: float | None = None  # mean running batch (server gauge)
    max_running: float | None = None
    kv_usage: float | None = None  # mean KV-cache use 0..1 (server gauge)
    input_tokens: float = 0.0  # mean per successful request
    output_tokens: float = 0.0
    queue_source: str = "client"  # where `waiting` came from: "server" or "client"
    cut_short: bool = False  # stopped once its TTFT percentile was certainly missed
    itl_mean_s: float | None = None  # the mean over requests of their mean inter-token latency
    decoding: float = 0.0  # mean requests between their first token and their end (client side)

    @property
    def backlog_ratio(self) -> float:
        """Completions over arrivals in the steady window: about 1 when the replica keeps up."""
        return self.completion_rate / self.arrival_rate if self.arrival_rate > 0 else 1.0

    def to_dict(self) -> dict:
        return {
            "rate": round(self.rate, 4),
            "tokensPerSecond": round(self.tokens_per_second, 2),
            "ttftSeconds": _finite(self.ttft_s),
            "itlSeconds": None if self.itl_s is None else _finite(self.itl_s),
            "errors": self.errors,
            "requests": self.requests,
            "ttftP50Seconds": _finite(self.ttft_p50_s),
            "arrivalRate": round(self.arrival_rate, 4),
            "completionRate": round(self.completion_rate, 4),
            "concurrency": round(self.concurrency, 3),
            "waiting": round(self.waiting, 3),
            "queueSource": self.queue_source,
            "running": None if self.running is None else round(self.running, 3),
            "kvCacheUsage": None if self.kv_usage is None else round(self.kv_usage, 4),
            "inputTokens": round(self.input_tokens, 1),
            "outputTokens": round(self.output_tokens, 1),
            "itlMeanSeconds": None if self.itl_mean_s is None else round(self.itl_mean_s, 6),
            "cutShort": self.cut_short,
        }


def _finite(value: float) -> float | None:
    return round(value, 5) if math.isfinite(value) else None


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def late_budget(requests: int, p: float) -> int:
    """How many of `requests` may miss the TTFT target while its p-th percentile still meets it
    (nearest rank): one more late request and the step has failed, whatever the rest do."""
    return requests - max(1, math.ceil(p / 100.0 * requests))


def steady_window(samples: Sequence[RequestSample], warmup_fraction: float = 0.2) -> tuple[float, float]:
    """From `warmup_fraction` of the way through the arrivals to the last arrival: the replica's
    batch has filled by then, and after the last arrival the load only drains."""
    last = max((s.scheduled_at for s in samples), default=0.0)
    return warmup_fraction * last, last


def _overlap(start: float, end: float, window: tuple[float, float]) -> float:
    return max(0.0, min(end, window[1]) - max(start, window[0]))


def step_point(
    rate: float,
    samples: Sequence[RequestSample],
    slo: Slo,
    gauges: Sequence[GaugeSample] = (),
    *,
    warmup_fraction: float = 0.2,
) -> Point:
    """A step's records as one point. Failed requests are errors and never throughput."""
    if not samples:
        raise ValueError("a step with no requests")
    window = steady_window(samples, warmup_fraction)
    length = window[1] - window[0]
    ok = [s for s in samples if s.ok]
    tokens = 0.0
    for s in ok:
        if s.first_token_at is None or s.output_tokens <= 0:
            continue
        if window[0] <= s.first_token_at < window[1]:
            tokens += 1
        rest = s.output_tokens - 1
        if rest > 0 and s.last_token_at is not None:
            spread = s.last_token_at - s.first_token_at
            if spread > 0:  # the later tokens, taken as evenly spread between the first and the last
                tokens += rest * _overlap(s.first_token_at, s.last_token_at, window) / spread
            elif window[0] <= s.last_token_at < window[1]:
                tokens += rest
    arrived = sum(1 for s in samples if window[0] <= s.scheduled_at < window[1])
    completed = sum(1 for s in ok if s.finished_at is not None and window[0] <= s.finished_at < window[1])
    end_of = [s.finished_at if s.finished_at is not None else window[1] for s in samples]
    concurrency = sum(_overlap(s.scheduled_at, e, window) for s, e in zip(samples, end_of, strict=True))
    decoding = sum(_overlap(s.first_token_at, s.last_token_at, window) for s in ok
                   if s.first_token_at is not None and s.last_token_at is not None)
    # client side, a request "waits" until its first token (queue plus its own prefill)
    client_waits = _time_profile(
        [(s.scheduled_at, s.first_token_at if s.first_token_at is not None else e) for s, e in zip(samples, end_of,
                                                                                                    strict=True)],
        window,
    )
    in_window = [g for g in gauges if window[0] <= g.at <= window[1]]
    itls = [v for v in (s.itl for s in samples) if v is not None]
    ttfts = [s.ttft for s in samples]
    if in_window:
        waiting = percentile([g.waiting for g in in_window], 90)
        running = sum(g.running for g in in_window) / len(in_window)
        max_running = max(g.running for g in in_window)
        kv = [g.kv_usage for g in in_window if g.kv_usage is not None]
        kv_usage = sum(kv) / len(kv) if kv else None
        source = "server"
    else:
        waiting, running, max_running, kv_usage, source = client_waits, None, None, None, "client"
    return Point(
        rate=rate,
        requests=len(samples),
        errors=sum(1 for s in samples if not s.ok and not s.cut),
        tokens_per_second=tokens / length if length > 0 else 0.0,
        ttft_s=percentile(ttfts, slo.percentile),
        itl_s=percentile(itls, slo.percentile) if itls else None,
        ttft_p50_s=percentile(ttfts, 50),
        arrival_rate=arrived / length if length > 0 else 0.0,
        completion_rate=completed / length if length > 0 else 0.0,
        concurrency=concurrency / length if length > 0 else 0.0,
        waiting=waiting,
        running=running,
        max_running=max_running,
        kv_usage=kv_usage,
        input_tokens=sum(s.input_tokens for s in ok) / len(ok) if ok else 0.0,
        output_tokens=sum(s.output_tokens for s in ok) / len(ok) if ok else 0.0,
        queue_source=source,
        cut_short=any(s.cut for s in samples),
        itl_mean_s=sum(itls) / len(itls) if itls else None,
        decoding=decoding / length if length > 0 else 0.0,
    )


def _time_profile(intervals: Sequence[tuple[float, float]], window: tuple[float, float], quantile: float = 90) -> float:
    """The count of open intervals that the window spends at or below, `quantile`% of its time."""
    length = window[1] - window[0]
    if length <= 0:
        return 0.0
    events = []
    for start, end in intervals:
        start, end = max(start, window[0]), min(end, window[1])
        if end > start:
            events += [(start, 1), (end, -1)]
    events.sort()
    time_at: dict[int, float] = {}
    level, last = 0, window[0]
    for at, change in events:
        time_at[level] = time_at.get(level, 0.0) + at - last
        level, last = level + change, at
    time_at[level] = time_at.get(level, 0.0) + window[1] - last
    covered = 0.0
    for count in sorted(time_at):
        covered += time_at[count]
        if covered >= quantile / 100.0 * length - 1e-12:
            return float(count)
    return float(max(time_at))


# --- the search -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchConfig:
    start_rate: float = 1.0  # requests/s of the first step
    growth: float = 2.0  # the coarse sweep multiplies the rate by this while steps pass
    resolution: float = 0.1  # stop once the lowest failing rate is within this fraction above the best pass
    max_steps: int = 14
    min_rate: float = 0.01  # below this, give up: nothing meets the SLO
    max_rate: float = math.inf  # the coarse sweep stops here even if every step passed
    saturation_ratio: float = 0.85  # completions/arrivals below this in the steady window: saturated
    max_error_fraction: float = 0.0  # more failed requests than this share fails the step
    confirmations: int = 1  # the chosen rate must pass this many more times (a failure reopens the bracket)

    def __post_init__(self) -> None:
        if not self.start_rate > 0 or not self.growth > 1 or not 0 < self.resolution < 1:
            raise ValueError("start_rate > 0, growth > 1 and 0 < resolution < 1 are required")


def verdict(point: Point, slo: Slo, config: SearchConfig) -> str:
    """PASS, or why the step fails (the first reason in the order errors, saturated, ttft, itl)."""
    if point.errors > config.max_error_fraction * point.requests:
        return ERRORS
    if point.cut_short:
        return TTFT
    if point.backlog_ratio < config.saturation_ratio:
        return SATURATED
    if not point.ttft_s <= slo.ttft_s:
        return TTFT
    if slo.itl_s is not None and not (point.itl_s is not None and point.itl_s <= slo.itl_s):
        return ITL
    return PASS


@dataclass
class Search:
    """Doubling, then bisection. Call `next_rate()`, measure, `record()` the point; None = done."""

    slo: Slo
    config: SearchConfig = field(default_factory=SearchConfig)
    points: list[Point] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    stop_reason: str = ""

    def record(self, point: Point, phase: str | None = None) -> str:
        outcome = verdict(point, self.slo, self.config)
        phase = phase or self.phase()
        self.points.append(point)
        self.verdicts.append(outcome)
        self.phases.append(phase)
        return outcome

    def best_pass(self) -> Point | None:
        """The highest passing rate below the lowest failing one (a pass above a fail is luck)."""
        fail = self.lowest_fail()
        ceiling = fail.rate if fail is not None else math.inf
        passes = [p for p, v in zip(self.points, self.verdicts, strict=True) if v == PASS and p.rate < ceiling]
        best = max((p.rate for p in passes), default=None)
        return None if best is None else [p for p in passes if p.rate == best][-1]  # the latest, if measured twice

    def lowest_fail(self) -> Point | None:
        fails = [p for p, v in zip(self.points, self.verdicts, strict=True) if v != PASS]
        return min(fails, key=lambda p: p.rate, default=None)

    def phase(self) -> str:
        good, bad = self.best_pass(), self.lowest_fail()
        if good is None or bad is None:
            return "sweep"
        return "confirm" if self._bracketed(good, bad) else "bisect"

    def _bracketed(self, good: Point, bad: Point | None) -> bool:
        return bad is None or bad.rate <= good.rate * (1 + self.config.resolution)

    def _unconfirmed(self, good: Point) -> bool:
        passes = sum(1 for p, v in zip(self.points, self.verdicts, strict=True) if v == PASS and p.rate == good.rate)
        return passes < 1 + self.config.confirmations

    def next_rate(self) -> float | None:
        config = self.config
        if not self.points:
            return config.start_rate
        if len(self.points) >= config.max_steps:
            self.stop_reason = f"the step limit ({config.max_steps}) was reached"
            return None
        good, bad = self.best_pass(), self.lowest_fail()
        if bad is None:  # every step passed: keep doubling
            rate = good.rate * config.growth
            if good.rate >= config.max_rate:
                if self._unconfirmed(good):
                    return good.rate
                self.stop_reason = f"every step passed up to --max-rate {config.max_rate:g} req/s"
                return None
            return min(rate, config.max_rate)
        if good is None:  # even the lowest rate failed: go down
            rate = bad.rate / config.growth
            if rate < config.min_rate:
                self.stop_reason = f"no rate down to {config.min_rate:g} req/s meets the SLO"
                return None
            return rate
        if self._bracketed(good, bad):
            if self._unconfirmed(good):  # measure the best pass again before suggesting it
                return good.rate
            self.stop_reason = (f"bracketed: {good.rate:.3g} req/s passes (confirmed), {bad.rate:.3g} fails "
                                f"({_reason(self, bad)})")
            return None
        return math.sqrt(good.rate * bad.rate)


def _reason(search: Search, point: Point) -> str:
    return next(v for p, v in zip(search.points, search.verdicts, strict=True) if p is point)


# --- what to suggest ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    chosen: Point | None  # the highest rate that met the SLO
    target_tokens_per_second: float | None
    target_queue_depth: float | None
    knee: Point | None  # where latency turns up on the curve (None with under three points)
    capacity_tokens_per_second: float  # the most tokens/s any step delivered (passing or not)


def suggest(search: Search) -> Suggestion:
    """targetTokensPerSecondPerReplica: the generated tokens/s served at the chosen point (its
    rate times the tokens each request generated).
    targetQueueDepthPerReplica: the deepest queue the replica shows while it still meets the SLO
    there, its 90th percentile over the step, at least 1 (a deeper queue means more load than the
    chosen point, so the queue rule scales up just where the tokens rule's target is passed)."""
    chosen = search.best_pass()
    capacity = max((p.tokens_per_second for p in search.points), default=0.0)
    knee_point = knee([p for p, v in zip(search.points, search.verdicts, strict=True) if v != ERRORS])
    if chosen is None:
        return Suggestion(None, None, None, knee_point, capacity)
    # A passing point keeps up (completions match arrivals), so it serves the offered rate times
    # the tokens per request; the step's windowed tokens/s carries one Poisson draw's noise.
    served = chosen.rate * chosen.output_tokens if chosen.output_tokens > 0 else chosen.tokens_per_second
    return Suggestion(
        chosen=chosen,
        target_tokens_per_second=round_significant(served, 3),
        target_queue_depth=float(max(1, math.ceil(chosen.waiting - 1e-9))),
        knee=knee_point,
        capacity_tokens_per_second=capacity,
    )


def knee(points: Sequence[Point]) -> Point | None:
    """The point of the latency-load curve furthest below the chord from its first to its last
    point, both axes scaled to 0..1 (Kneedle's idea, on TTFT at the percentile against the offered
    rate, which unlike the delivered tokens/s only grows along the curve). Points with an infinite
    TTFT are left out; a rate measured twice counts once, by its latest step."""
    latest = {p.rate: p for p in points if math.isfinite(p.ttft_s)}
    curve = sorted(latest.values(), key=lambda p: p.rate)
    if len(curve) < 3:
        return None
    xs = [p.rate for p in curve]
    ys = [p.ttft_s for p in curve]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 <= x0 or y1 <= y0:
        return None
    nx = [(x - x0) / (x1 - x0) for x in xs]
    ny = [(y - y0) / (y1 - y0) for y in ys]
    # the chord joins the first (lowest-rate) and the last point; the knee lies furthest below it
    ax, ay, bx, by = nx[0], ny[0], nx[-1], ny[-1]
    norm = math.hypot(bx - ax, by - ay) or 1.0
    best, best_distance = None, 0.0
    for point, x, y in zip(curve[1:-1], nx[1:-1], ny[1:-1], strict=True):
        distance = ((bx - ax) * (ay - y) - (by - ay) * (ax - x)) / norm  # > 0 below the chord
        if distance > best_distance:
            best, best_distance = point, distance
    return best


def round_significant(value: float, digits: int) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))
