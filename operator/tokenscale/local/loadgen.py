"""The load generator: a schedule of requests (a built-in ramp or a trace, time-compressed),
replayed open-loop against an OpenAI-compatible URL with bounded concurrency.

Each request streams (`/v1/completions`, `ignore_eos` so its length is the one asked for), and
its time to first token is measured from its scheduled arrival, so time spent waiting for a
concurrency slot counts, as it would for a user. A 429 is recorded as a rejection (the server's
explicit answer to a full queue), anything else that is not a complete answer as a failure.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

_WORDS = (
    "scale replica token queue batch cache model serve load surge plateau fall idle latency "
    "throughput prompt decode prefill router metric signal window target ready drain"
).split()


@dataclass(frozen=True)
class PlannedRequest:
    at: float  # seconds after the start of the run
    prompt_tokens: int
    output_tokens: int


@dataclass
class RequestResult:
    at: float
    status: int = 0  # HTTP status; 0 when no response came
    first_token_at: float | None = None
    finished_at: float | None = None
    output_tokens: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.at


# --- schedules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RampShape:
    """The built-in shape, as fractions of the run: idle, surge, plateau, fall, idle again."""

    surge_start: float = 0.12
    plateau_start: float = 0.22
    fall_start: float = 0.50
    idle_start: float = 0.58

    def level(self, fraction: float) -> float:
        """Load level 0..1 at `fraction` of the run."""
        if fraction < self.surge_start or fraction >= self.idle_start:
            return 0.0
        if fraction < self.plateau_start:
            return (fraction - self.surge_start) / (self.plateau_start - self.surge_start)
        if fraction < self.fall_start:
            return 1.0
        return 1.0 - (fraction - self.fall_start) / (self.idle_start - self.fall_start)


def ramp(
    duration: float,
    idle_rps: float,
    peak_rps: float,
    prompt_tokens: tuple[int, int] = (16, 48),
    output_tokens: tuple[int, int] = (32, 64),
    shape: RampShape | None = None,
    seed: int = 0,
) -> list[PlannedRequest]:
    """Poisson arrivals whose rate follows `shape` between `idle_rps` and `peak_rps`."""
    shape = shape or RampShape()
    rng = random.Random(seed)
    plan: list[PlannedRequest] = []
    t = 0.0
    # Thinning (Lewis-Shedler): candidates at the peak rate, each kept with rate(t)/peak.
    while True:
        t += rng.expovariate(peak_rps)
        if t >= duration:
            return plan
        rate = idle_rps + (peak_rps - idle_rps) * shape.level(t / duration)
        if rng.random() < rate / peak_rps:
            plan.append(PlannedRequest(t, rng.randint(*prompt_tokens), rng.randint(*output_tokens)))


def offered_rps(plan: Sequence[PlannedRequest], start: float, end: float) -> float:
    """The planned arrival rate over [start, end)."""
    return sum(1 for r in plan if start <= r.at < end) / max(1e-9, end - start)


def from_trace(
    path: Path,
    duration: float | None = None,
    mean_rps: float | None = None,
    prompt_scale: float = 1 / 16,
    output_scale: float = 1.0,
    prompt_range: tuple[int, int] = (4, 128),
    output_range: tuple[int, int] = (4, 64),
    seed: int = 0,
) -> list[PlannedRequest]:
    """A request trace (`timestamp_s,input_tokens,output_tokens`) as a plan.

    Time is compressed so the trace spans `duration` seconds (None keeps its own clock); rows are
    thinned at random to `mean_rps` when the trace is denser (None keeps every row); token counts
    are scaled and clamped to what the tiny model serves.
    """
    with open(path, newline="") as f:
        rows = [(float(r["timestamp_s"]), int(r["input_tokens"]), int(r["output_tokens"])) for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{path}: no requests")
    rows.sort()
    t0, span = rows[0][0], max(1e-9, rows[-1][0] - rows[0][0])
    factor = (duration / span) if duration else 1.0
    keep = 1.0
    if mean_rps:
        keep = min(1.0, mean_rps * span * factor / len(rows))
    rng = random.Random(seed)

    def clamp(value: float, bounds: tuple[int, int]) -> int:
        return int(min(bounds[1], max(bounds[0], round(value))))

    return [
        PlannedRequest((ts - t0) * factor, clamp(inp * prompt_scale, prompt_range), clamp(out * output_scale, output_range))
        for ts, inp, out in rows
        if rng.random() < keep
    ]


# --- replay ---------------------------------------------------------------------------------


@dataclass
class LoadGenerator:
    url: str  # the router's base URL
    model: str
    plan: list[PlannedRequest]
    max_concurrency: int = 64
    seed: int = 0
    results: list[RequestResult] = field(default_factory=list)
    tokens_per_second_bucket: Counter = field(default_factory=Counter)  # whole second -> tokens received
    in_flight: int = 0
    started_at: float = 0.0

    def now(self) -> float:
        return time.monotonic() - self.started_at

    def tokens_per_second(self, window: float = 3.0) -> float:
        now = self.now()
        last_whole = math.floor(now) - 1  # the current second is still filling
        seconds = [s for s in range(int(last_whole - window + 1), int(last_whole) + 1) if s >= 0]
        return sum(self.tokens_per_second_bucket[s] for s in seconds) / max(1, len(seconds))

    def offered_rps(self, window: float = 5.0) -> float:
        now = self.now()
        return offered_rps(self.plan, max(0.0, now - window), now) if now > 0 else 0.0

    async def run(self, started_at: float | None = None) -> list[RequestResult]:
        """Replay the plan; returns when every request has finished."""
        self.started_at = started_at if started_at is not None else time.monotonic()
        rng = random.Random(self.seed)
        slots = asyncio.Semaphore(self.max_concurrency)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=300, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = []
            for planned in self.plan:
                delay = planned.at - self.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                prompt = " ".join(rng.choice(_WORDS) for _ in range(planned.prompt_tokens))
                tasks.append(asyncio.create_task(self._one(session, slots, planned, prompt)))
            return list(await asyncio.gather(*tasks))

    async def _one(
        self, session: aiohttp.ClientSession, slots: asyncio.Semaphore, planned: PlannedRequest, prompt: str
    ) -> RequestResult:
        result = RequestResult(at=planned.at)
        self.results.append(result)
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": planned.output_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with slots:
            self.in_flight += 1
            try:
                await self._stream(session, body, result)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                result.error = result.error or f"{type(exc).__name__}: {exc}"
            finally:
                self.in_flight -= 1
                result.finished_at = self.now()
        return result

    async def _stream(self, session: aiohttp.ClientSession, body: dict, result: RequestResult) -> None:
        async with session.post(f"{self.url}/v1/completions", json=body) as response:
            result.status = response.status
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return
            done = False
            usage_tokens = None
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True  # read on to the end of the body, so the connection is reused
                    continue
                chunk = json.loads(data)
                if chunk.get("error"):
                    result.error = f"stream error: {chunk['error']}"
                    return
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
                if chunk.get("choices"):
                    now = self.now()
                    if result.first_token_at is None:
                        result.first_token_at = now
                    result.output_tokens += 1
                    self.tokens_per_second_bucket[math.floor(now)] += 1
            if not done:
                result.error = "stream ended before [DONE]"
            elif usage_tokens is not None and usage_tokens != result.output_tokens:
                # Chunks may carry more than one token; the usage block is exact.
                self.tokens_per_second_bucket[math.floor(self.now())] += usage_tokens - result.output_tokens
                result.output_tokens = usage_tokens
