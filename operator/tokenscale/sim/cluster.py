"""The simulated service: replicas doing continuous batching behind a least-outstanding router.

Time advances in fixed ticks (`dt_s`, half a second by default). Inside a tick each replica
splits its time between prefill (serial, compute-bound, exact start and end times, so TTFT is
measured to the millisecond) and decode iterations (all running sequences advance one token
per iteration; a finished sequence leaves at its interpolated time). Admission reserves a
request's prompt + output tokens of KV cache and a batch slot; what does not fit waits in the
replica's queue, which is the queue depth the metrics report.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

import numpy as np

from .profiles import ReplicaProfile
from .workload import Workload

STARTING, READY, DRAINING, GONE = "starting", "ready", "draining", "gone"

# why a request was dropped: RequestLog.dropped holds one (-1 when served), an index into DROP_REASON_NAMES
DROP_NO_REPLICA, DROP_QUEUE_FULL, DROP_TOO_LONG, DROP_DRAIN_TIMEOUT, DROP_UNFINISHED = range(5)
# the activator's 503s (sim/activator.py): over its bound of held requests, or held past its timeout
DROP_HOLD_FULL, DROP_HOLD_TIMEOUT = 5, 6
DROP_REASON_NAMES = ("no-ready-replica", "queue-full", "too-long", "drain-timeout", "unfinished",
                     "activator-full", "hold-timeout")


class Replica:
    __slots__ = (
        "id", "state", "created_at", "ready_at", "gone_at", "drain_deadline",
        "waiting", "prefilling", "prefill_free_at", "decoding", "progress",
        "admitted", "kv_reserved", "decode_input_sum", "decode_join_sum", "prefill_input_sum",
        "outstanding", "version",
    )  # fmt: skip

    def __init__(self, replica_id: int, created_at: float, ready_at: float):
        self.id = replica_id
        self.state = STARTING if ready_at > created_at else READY
        self.created_at = created_at
        self.ready_at = ready_at
        self.gone_at: float | None = None
        self.drain_deadline = 0.0
        self.waiting: deque[int] = deque()  # routed, not admitted (FIFO)
        self.prefilling: deque[tuple[int, float, float]] = deque()  # (request, start, end)
        self.prefill_free_at = 0.0
        self.decoding: list[tuple[float, int]] = []  # heap of (progress at which it finishes, request)
        self.progress = 0.0  # decode iterations done since start: every running sequence advanced this much
        self.admitted = 0
        self.kv_reserved = 0
        self.decode_input_sum = 0
        self.decode_join_sum = 0.0
        self.prefill_input_sum = 0
        self.outstanding = 0  # waiting + admitted: what the router balances
        self.version = 0  # bumped on every change of `outstanding` or state (router heap entries)

    def kv_tokens(self) -> float:
        """Tokens in the cache now: prompts of admitted requests plus what each decoded so far."""
        decoded = len(self.decoding) * self.progress - self.decode_join_sum
        return self.prefill_input_sum + self.decode_input_sum + decoded


@dataclass
class RequestLog:
    """Per-request outcomes (NaN where it never happened)."""

    admitted_at: np.ndarray
    first_token_at: np.ndarray
    finished_at: np.ndarray
    dropped: np.ndarray  # -1 served, else a DROP_* reason
    replica: np.ndarray


class Cluster:
    """Replicas, the router, and their evolution over a tick. Knows nothing of autoscaling."""

    def __init__(self, workload: Workload, profile: ReplicaProfile, *, seed: int = 0, on_first_token=None):
        self.workload = workload
        self.profile = profile
        self.rng = np.random.default_rng(seed + 7919)
        self.replicas: list[Replica] = []  # every replica ever created, in creation order
        self.live: list[Replica] = []  # not gone
        self._next_id = 0
        n = len(workload)
        self.arrival = workload.arrival_s.tolist()
        self.inputs = workload.input_tokens.tolist()
        self.outputs = workload.output_tokens.tolist()
        nan = float("nan")
        # plain lists while running (element writes are several times cheaper than numpy's);
        # `finalise_log` turns them into arrays
        self.log = RequestLog(
            admitted_at=[nan] * n,
            first_token_at=[nan] * n,
            finished_at=[nan] * n,
            dropped=[-1] * n,
            replica=[-1] * n,
        )
        self.generated_tokens = 0.0  # counters, over all pods ever
        self.prompt_tokens = 0.0
        self.served = 0
        self.served_output_tokens = 0
        self.dropped = 0
        self.on_first_token = on_first_token  # callback(time, ttft) for the metrics' histogram
        # The router's view: a heap of (outstanding, replica id, version, replica); entries whose
        # version is no longer the replica's are stale and skipped, so each change costs O(log n).
        self._router: list[tuple[int, int, int, Replica]] = []

    def _touch(self, replica: Replica, delta: int = 0) -> None:
        replica.outstanding += delta
        replica.version += 1
        if replica.state == READY:
            heapq.heappush(self._router, (replica.outstanding, replica.id, replica.version, replica))
            if len(self._router) > 8 * len(self.live) + 4096:  # drop stale entries now and then
                self._router = [e for e in self._router if e[2] == e[3].version]
                heapq.heapify(self._router)

    def finalise_log(self) -> RequestLog:
        log = self.log
        self.log = RequestLog(
            admitted_at=np.asarray(log.admitted_at, dtype=np.float64),
            first_token_at=np.asarray(log.first_token_at, dtype=np.float64),
            finished_at=np.asarray(log.finished_at, dtype=np.float64),
            dropped=np.asarray(log.dropped, dtype=np.int64),
            replica=np.asarray(log.replica, dtype=np.int64),
        )
        return self.log

    # --- replica lifecycle --------------------------------------------------------------------

    def counts(self) -> tuple[int, int, int]:
        """(starting, ready, draining)."""
        starting = ready = draining = 0
        for replica in self.live:
            if replica.state == READY:
                ready += 1
            elif replica.state == STARTING:
                starting += 1
            else:
                draining += 1
        return starting, ready, draining

    def add_replica(self, now: float, *, instant: bool = False) -> Replica:
        profile = self.profile
        delay = 0.0
        if not instant:
            spread = profile.startup_spread_s
            delay = max(0.0, profile.startup_s + (self.rng.uniform(-spread, spread) if spread else 0.0))
        replica = Replica(self._next_id, now, now + delay)
        self._next_id += 1
        self.replicas.append(replica)
        self.live.append(replica)
        if replica.state == READY:
            self._touch(replica)
        return replica

    def scale_to(self, desired: int, now: float, *, instant: bool = False) -> None:
        """Kubernetes-like: new pods start (model load), surplus pods go, not-ready ones first,
        then the newest; a removed ready pod drains (no new requests, finishes in-flight work)."""
        serving = [r for r in self.live if r.state in (STARTING, READY)]
        if desired > len(serving):
            for _ in range(desired - len(serving)):
                self.add_replica(now, instant=instant)
            return
        surplus = len(serving) - desired
        victims = [r for r in reversed(serving) if r.state == STARTING]
        victims += [r for r in reversed(serving) if r.state == READY]
        for replica in victims[:surplus]:
            if replica.state == STARTING:
                replica.state = GONE
                replica.gone_at = now
            else:
                replica.state = DRAINING
                replica.drain_deadline = now + self.profile.drain_timeout_s
            replica.version += 1  # out of the router
        self.live = [r for r in self.live if r.state != GONE]

    def promote_ready(self, now: float) -> None:
        for replica in self.live:
            if replica.state == STARTING and replica.ready_at <= now:
                replica.state = READY
                replica.prefill_free_at = replica.ready_at
                self._touch(replica)

    # --- requests -----------------------------------------------------------------------------

    def drop(self, request: int, reason: int) -> None:
        self.log.dropped[request] = reason
        self.dropped += 1

    def route(self, request: int, now: float) -> None:
        """Least outstanding requests over ready replicas (ties: the oldest replica)."""
        heap = self._router
        best = None
        while heap:
            entry = heap[0]
            if entry[2] == entry[3].version:
                best = entry[3]
                break
            heapq.heappop(heap)
        profile = self.profile
        if best is None:
            self.drop(request, DROP_NO_REPLICA)
            return
        if self.inputs[request] + self.outputs[request] > profile.kv_capacity_tokens:
            self.drop(request, DROP_TOO_LONG)
            return
        if profile.max_waiting is not None and len(best.waiting) >= profile.max_waiting:
            self.drop(request, DROP_QUEUE_FULL)
            return
        self.log.replica[request] = best.id
        best.waiting.append(request)
        self._touch(best, +1)
        self.admit(best, now)

    def admit(self, replica: Replica, now: float) -> None:
        """Move waiting requests into the batch while a slot and their KV reservation fit."""
        profile = self.profile
        waiting = replica.waiting
        inputs, outputs = self.inputs, self.outputs
        while waiting:
            request = waiting[0]
            need = inputs[request] + outputs[request]
            if replica.admitted >= profile.max_batch or replica.kv_reserved + need > profile.kv_capacity_tokens:
                return
            waiting.popleft()
            replica.admitted += 1
            replica.kv_reserved += need
            start = max(now, replica.prefill_free_at)
            end = start + inputs[request] / profile.prefill_tokens_per_s
            replica.prefill_free_at = end
            replica.prefilling.append((request, start, end))
            replica.prefill_input_sum += inputs[request]
            self.log.admitted_at[request] = now

    # --- one tick of work ---------------------------------------------------------------------

    def step(self, replica: Replica, t: float, dt: float) -> None:
        profile = self.profile
        inputs, outputs = self.inputs, self.outputs
        t_end = t + dt
        # prefill holds the engine for its exact intervals; decode gets the rest of the tick
        busy = 0.0
        joining = []
        prefilling = replica.prefilling
        if prefilling:
            for _request, start, end in prefilling:
                if start >= t_end:
                    break
                busy += (end if end < t_end else t_end) - (start if start > t else t)
            while prefilling and prefilling[0][2] <= t_end:
                joining.append(prefilling.popleft())
        decode_time = dt - busy if busy < dt else 0.0

        heap = replica.decoding
        p_old = replica.progress
        effective_batch = len(heap)
        for _request, _start, end in joining:
            effective_batch += max(0.0, t_end - end) / dt
        iterations = 0.0
        if effective_batch > 0 and decode_time > 0:
            iterations = decode_time / profile.step_seconds(effective_batch, replica.kv_tokens())
        p_new = p_old + iterations
        generated = effective_batch * iterations

        log = self.log
        for request, _start, end in joining:
            replica.prefill_input_sum -= inputs[request]
            log.first_token_at[request] = end
            self.prompt_tokens += inputs[request]
            generated += 1.0
            if self.on_first_token is not None:
                self.on_first_token(end, end - self.arrival[request])
            if outputs[request] <= 1:
                self._finish(replica, request, end)
                continue
            join = p_old + iterations * max(0.0, end - t) / dt
            heapq.heappush(heap, (join + outputs[request] - 1, request))
            replica.decode_input_sum += inputs[request]
            replica.decode_join_sum += join

        while heap and heap[0][0] <= p_new:
            finish, request = heapq.heappop(heap)
            generated -= p_new - finish
            replica.decode_input_sum -= inputs[request]
            replica.decode_join_sum -= finish - outputs[request] + 1
            when = t + (finish - p_old) / iterations * dt if iterations > 0 else t_end
            self._finish(replica, request, min(max(when, t), t_end))
        replica.progress = p_new
        self.generated_tokens += generated

    def _finish(self, replica: Replica, request: int, when: float) -> None:
        self._touch(replica, -1)
        replica.admitted -= 1
        replica.kv_reserved -= self.inputs[request] + self.outputs[request]
        self.log.finished_at[request] = when
        self.served += 1
        self.served_output_tokens += self.outputs[request]

    def retire_drained(self, now: float) -> None:
        """Draining replicas leave when empty, or at their grace period's end (the rest is dropped)."""
        changed = False
        for replica in self.live:
            if replica.state != DRAINING:
                continue
            if replica.outstanding and now >= replica.drain_deadline:
                self.abandon(replica, DROP_DRAIN_TIMEOUT)
            if not replica.outstanding:
                replica.state = GONE
                replica.gone_at = now
                changed = True
        if changed:
            self.live = [r for r in self.live if r.state != GONE]

    def abandon(self, replica: Replica, reason: int) -> None:
        for request in replica.waiting:
            self.drop(request, reason)
        for request, _start, _end in replica.prefilling:
            self.drop(request, reason)
        for _finish, request in replica.decoding:
            self.drop(request, reason)
        replica.waiting.clear()
        replica.prefilling.clear()
        replica.decoding.clear()
        replica.admitted = replica.kv_reserved = replica.outstanding = 0
        replica.decode_input_sum = replica.prefill_input_sum = 0
        replica.version += 1
        replica.decode_join_sum = 0.0

    def gauges(self) -> tuple[int, int, float, int]:
        """(waiting, running, mean KV use 0..1, pods reporting) over ready and draining pods."""
        waiting = running = pods = 0
        kv = 0.0
        for replica in self.live:
            if replica.state == READY or replica.state == DRAINING:
                waiting += len(replica.waiting)
                running += replica.admitted
                kv += replica.kv_tokens() / self.profile.kv_capacity_tokens
                pods += 1
        return waiting, running, (kv / pods if pods else 0.0), pods

    def in_flight(self) -> int:
        return sum(r.outstanding for r in self.live if r.state != STARTING)
