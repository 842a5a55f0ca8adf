"""A calibration run: the search asks for rates, the client measures them, the progress shows it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .client import LoadClient
from .plan import LengthMix, StepConfig, poisson_step
from .progress import Progress
from .search import Search, SearchConfig, Slo, late_budget, step_point


@dataclass
class Calibration:
    slo: Slo
    lengths: LengthMix
    search_config: SearchConfig = field(default_factory=SearchConfig)
    step: StepConfig = field(default_factory=StepConfig)
    start_rate: float | None = None  # None: from one request's service time
    warmup_requests: int = 50  # sent at the start rate before the first step, not measured


@dataclass
class Calibrated:
    search: Search
    service_time_s: float | None
    words_per_token: float
    server_gauges: bool


async def calibrate(client: LoadClient, calibration: Calibration, progress: Progress) -> Calibrated:
    await client.prepare()
    lengths = calibration.lengths
    service_time = None
    start_rate = calibration.start_rate
    if start_rate is None:
        # one request at a time: the rate a replica sustains with no batching at all, a floor
        # under what it sustains batched; the sweep starts there and doubles
        service_time = await client.service_time(round(lengths.mean_input), round(lengths.mean_output))
        start_rate = _round_rate(1.0 / max(service_time, 1e-3))
        progress.note(f"one request alone takes {service_time:.3f} s: the sweep starts at {start_rate:g} req/s")
    if calibration.warmup_requests:
        # a fresh server pays one-time costs on its first batches (allocations, kernel choice, CUDA
        # graphs); measured, they would fail the first step and send the sweep down for good
        plan = poisson_step(start_rate, lengths, replace(calibration.step, min_requests=calibration.warmup_requests,
                                                         seconds=0.0), index=-1)
        progress.note(f"warming up: {len(plan)} requests at {start_rate:g} req/s, not measured")
        await client.run_step(plan, drain_s=calibration.step.drain_s)
        await client.wait_idle()
    search = Search(calibration.slo, replace(calibration.search_config, start_rate=start_rate))
    index = 0
    while (rate := search.next_rate()) is not None:
        phase = search.phase()
        plan = poisson_step(rate, lengths, calibration.step, index=index, confirm=phase == "confirm")
        progress.start_step(index, rate, phase, len(plan))
        budget = (calibration.slo.ttft_s, late_budget(len(plan), calibration.slo.percentile))
        samples, gauges = await client.run_step(plan, drain_s=calibration.step.drain_s, on_done=progress.advance,
                                                ttft_budget=budget)
        point = step_point(rate, samples, calibration.slo, gauges)
        outcome = search.record(point, phase)
        progress.end_step(point, outcome)
        await client.wait_idle()
        index += 1
    progress.note(f"stopped: {search.stop_reason}")
    return Calibrated(search, service_time, client.words_per_token, client.has_gauges)


def _round_rate(rate: float) -> float:
    """Two significant figures: start rates that read well in the table."""
    digits = 1 - math.floor(math.log10(rate))
    return round(rate, digits)
