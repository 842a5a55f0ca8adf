"""One request's state inside the engine: tokens, cache row, timing and its streamed text."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from .sampling import SamplingParams


class Phase(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"
    FINISHED = "finished"


@dataclass(slots=True)
class Output:
    """What the engine reports for a request after a step: new text and tokens, and the end if reached."""

    request_id: str
    text_delta: str
    new_token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    error: str | None = None


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    phase: Phase = Phase.WAITING
    row: int = -1
    prefilled: int = 0  # prompt tokens already written to the cache
    generator: torch.Generator | None = None
    scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_reason: str | None = None
    text: str = ""  # decoded output so far (cut at a stop string)
    prefix_offset: int = 0  # incremental detokenizer: tokens [prefix_offset, read_offset) are decoded
    read_offset: int = 0
    sent_chars: int = 0  # how much of `text` the client has received

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def cached_len(self) -> int:
        """Tokens whose keys/values are in the cache (the last sampled token is not yet)."""
        return self.prefilled + max(0, len(self.output_ids) - 1)
