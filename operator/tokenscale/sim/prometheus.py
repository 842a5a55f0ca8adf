"""What Prometheus would hold: counters and gauges sampled at the scrape interval.

Policies never read the simulator's state directly; they query this view, which answers as
`sum(rate(counter[w]))` and `sum(gauge)` would at the moment of the query: from samples up to
one scrape interval old, with rates over whole windows. That lag is most of what makes
reactive autoscaling hard, so the simulator keeps it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MetricsConfig:
    scrape_interval_s: float = 15.0
    short_window_s: float = 60.0  # rate window of the fast signals (HPA, tokenscale short)
    long_window_s: float = 300.0  # rate window of tokenscale's long signal


@dataclass(frozen=True)
class Sample:
    time: float
    generated_tokens: float  # counter, summed over the service's pods
    prompt_tokens: float  # counter
    waiting: int  # gauge: requests queued in the pods
    running: int  # gauge: requests admitted to a batch
    kv_usage: float  # gauge: mean over reporting pods, 0..1
    pods_reporting: int  # pods that answered the scrape (ready or draining)
    finished_requests: float = 0.0  # counter (the operator reads vllm:request_success_total)
    finished_output_tokens: float = 0.0  # counter: output tokens of finished requests (the operator
    # divides generated_tokens instead, which also counts unfinished ones: equal in a steady state)


class PrometheusView:
    def __init__(self, config: MetricsConfig):
        self.config = config
        self.samples: list[Sample] = []
        self._times: list[float] = []
        self._ttft_times: list[float] = []  # when each first token was observed
        self._ttft_values: list[float] = []

    def record(self, sample: Sample) -> None:
        self.samples.append(sample)
        self._times.append(sample.time)

    def observe_ttft(self, when: float, ttft: float) -> None:
        # first tokens are observed in time order to within a tick; insort keeps queries exact
        if self._ttft_times and when < self._ttft_times[-1]:
            index = bisect.bisect(self._ttft_times, when)
            self._ttft_times.insert(index, when)
            self._ttft_values.insert(index, ttft)
        else:
            self._ttft_times.append(when)
            self._ttft_values.append(ttft)

    def latest(self, now: float) -> Sample | None:
        index = bisect.bisect_right(self._times, now) - 1
        return self.samples[index] if index >= 0 else None

    def rate(self, counter: str, now: float, window_s: float) -> float | None:
        """rate(counter[window]) at `now`: increase between the first and last samples inside the
        window over their time span (what Prometheus' extrapolation gives for a steady counter);
        None with fewer than two samples, as Prometheus returns no result."""
        hi = bisect.bisect_right(self._times, now) - 1
        lo = bisect.bisect_right(self._times, now - window_s)
        if hi < 0 or hi - lo < 1:
            return None
        first, last = self.samples[lo], self.samples[hi]
        return (getattr(last, counter) - getattr(first, counter)) / (last.time - first.time)

    def ttft_quantile(self, now: float, window_s: float, quantile: float) -> float | None:
        """The TTFT histogram's quantile over the window, as of the last scrape."""
        sample = self.latest(now)
        if sample is None:
            return None
        lo = bisect.bisect_right(self._ttft_times, sample.time - window_s)
        hi = bisect.bisect_right(self._ttft_times, sample.time)
        if hi <= lo:
            return None
        return float(np.quantile(self._ttft_values[lo:hi], quantile))
