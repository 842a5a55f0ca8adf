"""Iteration-level scheduling: which sequences run in the next step, under a token budget.

Cache rows are kept dense: rows[0:decoding] decode one token each step, rows[decoding:] are
still prefilling. Each step the decoding rows come first; what is left of the token budget goes
to prompt chunks — first the sequence whose prompt was cut at the last step, then new requests
from the waiting queue while free slots remain. Only the last admitted prompt can be cut, so the
prefilling rows that complete stay contiguous right after the decoding ones.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from .kv_cache import SlotKVCache
from .sequence import Phase, Sequence


@dataclass
class StepPlan:
    decode: list[Sequence] = field(default_factory=list)  # rows 0..len-1
    prefill: list[Sequence] = field(default_factory=list)  # rows following the decoding ones
    chunks: list[list[int]] = field(default_factory=list)  # prompt tokens each prefill row runs now
    starts: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


class QueueFull(Exception):
    pass


class Scheduler:
    def __init__(self, cache: SlotKVCache, max_slots: int, token_budget: int, max_waiting: int):
        self.cache = cache
        self.max_slots = max_slots
        self.token_budget = token_budget
        self.max_waiting = max_waiting
        self.waiting: deque[Sequence] = deque()
        self.rows: list[Sequence] = []
        self.decoding = 0

    @property
    def num_running(self) -> int:
        return len(self.rows)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def add(self, sequence: Sequence) -> None:
        # Requests that free slots will take at the next step do not count against the bound.
        free_slots = self.max_slots - len(self.rows)
        if len(self.waiting) >= self.max_waiting + free_slots:
            raise QueueFull
        self.waiting.append(sequence)

    def plan(self) -> StepPlan:
        plan = StepPlan(decode=self.rows[: self.decoding])
        budget = self.token_budget - len(plan.decode)
        prefilling = self.rows[self.decoding:]
        while budget > 0 and (prefilling or (self.waiting and len(self.rows) < self.max_slots)):
            if prefilling:
                sequence = prefilling.pop(0)
            else:
                sequence = self.waiting.popleft()
                sequence.row = len(self.rows)
                sequence.phase = Phase.PREFILL
                sequence.scheduled_time = time.monotonic()
                self.rows.append(sequence)
            take = min(budget, sequence.prompt_len - sequence.prefilled)
            plan.prefill.append(sequence)
            plan.chunks.append(sequence.prompt_ids[sequence.prefilled: sequence.prefilled + take])
            plan.starts.append(sequence.prefilled)
            budget -= take
        return plan

    def prefill_done(self, sequence: Sequence, tokens: int) -> bool:
        """Record a prompt chunk; returns True when the whole prompt is in the cache."""
        sequence.prefilled += tokens
        if sequence.prefilled < sequence.prompt_len:
            return False
        sequence.phase = Phase.DECODE
        self.decoding += 1
        return True

    def remove(self, sequence: Sequence) -> None:
        """Take a sequence out of the waiting queue or its row, keeping the rows dense."""
        if sequence.row < 0:
            if sequence in self.waiting:
                self.waiting.remove(sequence)
            return
        row = sequence.row
        if sequence.phase is Phase.DECODE:
            self._move(self.decoding - 1, row)
            self.decoding -= 1
            row = self.decoding
        self._move(len(self.rows) - 1, row)
        self.rows.pop()
        sequence.row = -1

    def _move(self, source: int, target: int) -> None:
        if source == target:
            return
        moved = self.rows[source]
        self.cache.move_row(source, target, moved.cached_len)
        self.rows[target] = moved
        moved.row = target
