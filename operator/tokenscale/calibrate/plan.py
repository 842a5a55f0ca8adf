"""What one step sends, pure: Poisson arrival times at the step's rate and each request's lengths,
either fixed or drawn from a trace's rows (its length mix; its timestamps are not used)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PlannedRequest:
    at: float  # seconds after the step's start
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class LengthMix:
    """(input, output) token pairs to draw from; one pair = every request alike."""

    pairs: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError("no request lengths")
        if any(i < 1 or o < 1 for i, o in self.pairs):
            raise ValueError("input and output tokens must be at least 1")

    @classmethod
    def fixed(cls, input_tokens: int, output_tokens: int) -> LengthMix:
        return cls(((input_tokens, output_tokens),))

    @classmethod
    def from_rows(cls, inputs: Sequence[int], outputs: Sequence[int]) -> LengthMix:
        return cls(tuple((max(1, int(i)), max(1, int(o))) for i, o in zip(inputs, outputs, strict=True)))

    @property
    def mean_input(self) -> float:
        return sum(i for i, _ in self.pairs) / len(self.pairs)

    @property
    def mean_output(self) -> float:
        return sum(o for _, o in self.pairs) / len(self.pairs)

    @property
    def longest(self) -> int:
        return max(i + o for i, o in self.pairs)


@dataclass(frozen=True)
class StepConfig:
    seconds: float = 30.0  # arrivals span about this long
    min_requests: int = 100  # at least this many requests, however low the rate
    max_requests: int = 5000
    confirm_factor: float = 2.0  # a confirmation step sends this many times the requests
    drain_s: float = 60.0  # after the last arrival, requests still running this long are cancelled (errors)
    seed: int = 0

    def requests_at(self, rate: float, *, confirm: bool = False) -> int:
        count = max(self.min_requests, math.ceil(rate * self.seconds)) * (self.confirm_factor if confirm else 1)
        return int(min(self.max_requests, math.ceil(count)))


def poisson_step(
    rate: float, lengths: LengthMix, config: StepConfig, *, index: int, confirm: bool = False
) -> list[PlannedRequest]:
    """Open-loop arrivals: exponential gaps at `rate`, seeded per step, the first at time 0."""
    if not rate > 0:
        raise ValueError("the rate must be positive")
    rng = random.Random(f"{config.seed}:{index}")
    plan, at = [], 0.0
    for _ in range(config.requests_at(rate, confirm=confirm)):
        input_tokens, output_tokens = rng.choice(lengths.pairs)
        plan.append(PlannedRequest(at, input_tokens, output_tokens))
        at += rng.expovariate(rate)
    return plan
