"""The engine thread: schedule, run the model, sample, stream text out — one iteration at a time."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .metrics import ServerMetrics
from .model_runner import LoadedModel, ModelRunner
from .sampling import SamplingParams, make_generator, sample_row
from .scheduler import QueueFull, Scheduler, StepPlan
from .sequence import Output, Phase, Sequence

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineConfig", "QueueFull"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_batch: int = 32  # cache slots = sequences decoded together
    max_model_len: int = 1024  # prompt + output tokens per sequence
    token_budget: int = 512  # tokens per step (decode rows + prompt chunks)
    max_waiting: int = 256  # beyond this, new requests are refused (HTTP 429)

    def __post_init__(self):
        if self.max_batch < 1 or self.max_model_len < 2 or self.max_waiting < 0:
            raise ValueError("max_batch >= 1, max_model_len >= 2 and max_waiting >= 0 are required")
        if self.token_budget <= self.max_batch:
            raise ValueError("token_budget must exceed max_batch, or prompts could starve behind decodes")


class Engine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig, metrics: ServerMetrics,
                 on_outputs: Callable[[list[Output]], None]):
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.config = config
        self.metrics = metrics
        self.on_outputs = on_outputs
        self.runner = ModelRunner(loaded, config.max_batch, config.max_model_len)
        self.scheduler = Scheduler(self.runner.cache, config.max_batch, config.token_budget, config.max_waiting)
        self.eos_ids = _eos_ids(loaded)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._aborts: set[str] = set()
        self._by_id: dict[str, Sequence] = {}
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.steps = 0

    # --- called from other threads -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> str:
        """Queue a request; raises QueueFull when the waiting queue is at its bound."""
        request_id = request_id or f"req-{next(self._ids)}"
        sequence = Sequence(request_id, list(prompt_ids), params)
        sequence.generator = make_generator(params, self.loaded.device)
        with self._lock:
            self.scheduler.add(sequence)
            self._by_id[request_id] = sequence
            self.metrics.waiting.set(self.scheduler.num_waiting)
        self._wake.set()
        return request_id

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.add(request_id)
        self._wake.set()

    # --- the engine thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.step()
            except Exception:  # the thread must survive anything one step throws
                log.exception("engine step failed")
                worked = False
            if not worked:
                self._wake.wait(timeout=0.5)
                self._wake.clear()

    def step(self) -> bool:
        """One iteration: returns False when there was nothing to run."""
        outputs: list[Output] = []
        with self._lock:
            aborted = [self._by_id[i] for i in self._aborts if i in self._by_id]
            self._aborts.clear()
            for sequence in aborted:
                self._finish(sequence, "abort", outputs)
            plan = self.scheduler.plan()
        if not plan.empty:
            self._run(plan, outputs)
            self.steps += 1
        with self._lock:
            self._update_gauges()
        if outputs:
            self.on_outputs(outputs)
        return not plan.empty

    def _run(self, plan: StepPlan, outputs: list[Output]) -> None:
        try:
            prefill_logits = decode_logits = None
            if plan.prefill:
                prefill_logits = self.runner.forward(plan.prefill[0].row, plan.chunks, plan.starts)
            if plan.decode:
                decode_logits = self.runner.forward(
                    0, [[s.output_ids[-1]] for s in plan.decode], [s.cached_len for s in plan.decode])
        except Exception as error:
            log.exception("forward pass failed; failing the %d sequences in it", len(plan.decode) + len(plan.prefill))
            with self._lock:
                for sequence in plan.decode + plan.prefill:
                    self._finish(sequence, "error", outputs, error=f"engine error: {error}")
            return

        # (sequence, its logits, its greedy token): argmax for all rows in one op and one transfer.
        sampled: list[tuple[Sequence, torch.Tensor, int]] = []
        prefill_greedy = prefill_logits.argmax(-1).tolist() if prefill_logits is not None else []
        for index, (sequence, chunk) in enumerate(zip(plan.prefill, plan.chunks, strict=True)):
            self.metrics.prompt_tokens.inc(len(chunk))
            if self.scheduler.prefill_done(sequence, len(chunk)):
                sampled.append((sequence, prefill_logits[index], prefill_greedy[index]))
        if decode_logits is not None:
            decode_greedy = decode_logits.argmax(-1).tolist()
            sampled.extend(zip(plan.decode, decode_logits, decode_greedy, strict=True))
        now = time.monotonic()
        finished: list[tuple[Sequence, str]] = []
        for sequence, logits, greedy_token in sampled:
            params = sequence.params
            try:
                if params.greedy and not params.penalised:
                    token = greedy_token
                else:
                    token = sample_row(logits, params, sequence.output_ids, sequence.generator)
            except Exception as error:  # a bad row fails alone, never its neighbours
                log.exception("sampling failed for %s", sequence.request_id)
                finished.append((sequence, "error"))
                outputs.append(self._output(sequence, "", 0, "error", error=str(error)))
                continue
            reason = self._append_token(sequence, token, now)
            delta = self._take_text(sequence, final=reason is not None)
            outputs.append(self._output(sequence, delta, 1, reason))
            if reason is not None:
                finished.append((sequence, reason))
        with self._lock:
            for sequence, reason in sorted(finished, key=lambda item: -item[0].row):
                self._finish(sequence, reason, None)

    def _append_token(self, sequence: Sequence, token: int, now: float) -> str | None:
        """Record a sampled token; returns the finish reason if the sequence is done."""
        if sequence.first_token_time is None:
            sequence.first_token_time = now
            self.metrics.ttft.observe(now - sequence.arrival_time)
        else:
            gap = now - sequence.last_token_time
            self.metrics.inter_token.observe(gap)
            self.metrics.time_per_output_token.observe(gap)
        sequence.last_token_time = now
        sequence.output_ids.append(token)
        self.metrics.generation_tokens.inc()
        params = sequence.params
        if token in params.stop_token_ids or (token in self.eos_ids and not params.ignore_eos):
            return "stop"
        self._detokenize(sequence)
        if params.stop and self._cut_at_stop(sequence):
            return "stop"
        if len(sequence.output_ids) >= params.max_tokens:
            return "length"
        if sequence.prompt_len + len(sequence.output_ids) >= self.config.max_model_len:
            return "length"
        return None

    def _detokenize(self, sequence: Sequence) -> None:
        """Incremental decoding: text of the new tokens, held back while it ends in a partial character."""
        ids = sequence.output_ids
        decode = self.tokenizer.decode
        before = decode(ids[sequence.prefix_offset: sequence.read_offset], skip_special_tokens=True)
        after = decode(ids[sequence.prefix_offset:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            sequence.text += after[len(before):]
            sequence.prefix_offset = sequence.read_offset
            sequence.read_offset = len(ids)

    def _cut_at_stop(self, sequence: Sequence) -> bool:
        longest = max(len(s) for s in sequence.params.stop)
        search_from = max(0, sequence.sent_chars - longest)
        hits = [i for i in (sequence.text.find(s, search_from) for s in sequence.params.stop) if i >= 0]
        if not hits:
            return False
        sequence.text = sequence.text[: min(hits)]
        return True

    def _take_text(self, sequence: Sequence, final: bool) -> str:
        """New text for the client; a tail that could still become a stop string waits."""
        end = len(sequence.text)
        if not final and sequence.params.stop:
            end -= max(len(s) for s in sequence.params.stop) - 1
        if end <= sequence.sent_chars:
            return ""
        delta = sequence.text[sequence.sent_chars: end]
        sequence.sent_chars = end
        return delta

    def _output(self, sequence: Sequence, delta: str, new_tokens: int, reason: str | None = None,
                error: str | None = None) -> Output:
        new_ids = sequence.output_ids[len(sequence.output_ids) - new_tokens:] if new_tokens else []
        return Output(sequence.request_id, delta, new_ids, sequence.prompt_len, len(sequence.output_ids),
                      reason, error)

    def _finish(self, sequence: Sequence, reason: str, outputs: list[Output] | None, error: str | None = None):
        """Free the sequence's slot and record it (call with the lock held)."""
        if sequence.phase is Phase.FINISHED:
            return
        self.scheduler.remove(sequence)
        sequence.phase = Phase.FINISHED
        sequence.finish_reason = reason
        self._by_id.pop(sequence.request_id, None)
        now = time.monotonic()
        self.metrics.finished(reason)
        self.metrics.e2e.observe(now - sequence.arrival_time)
        if sequence.scheduled_time is not None:
            self.metrics.queue_time.observe(sequence.scheduled_time - sequence.arrival_time)
        self.metrics.request_prompt_tokens.observe(sequence.prompt_len)
        self.metrics.request_generation_tokens.observe(len(sequence.output_ids))
        if outputs is not None:
            outputs.append(self._output(sequence, "", 0, reason, error))

    def _update_gauges(self) -> None:
        self.metrics.running.set(self.scheduler.num_running)
        self.metrics.waiting.set(self.scheduler.num_waiting)
        self.metrics.kv_cache_usage.set(self.scheduler.num_running / self.config.max_batch)


def _eos_ids(loaded: LoadedModel) -> set[int]:
    ids: set[int] = set()
    for source in (loaded.model.generation_config, loaded.model.config):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(e) for e in eos)
    if getattr(loaded.tokenizer, "eos_token_id", None) is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    return ids
