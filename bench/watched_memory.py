"""The memory of the operator's watched cache per InferenceService, old projection vs new, in one run.

    python bench/watched_memory.py --services 10000

Seeds `--services` watched InferenceServices, each with a status as the fleet tick leaves it
(six conditions, the signals, the policy's memory with `--recommendations` entries, the last 10
decisions), into `WatchedState` the way the watch handler does, and measures what the cache holds
(tracemalloc) and the CPU of one watch event per service (each status write comes back as one).
The OLD projection is the one before the views were slimmed: a full plain copy of the spec and
of the status per service. Prints both and their ratio.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable, Mapping
from typing import Any

from tokenscale.watched import ServiceView, WatchedState, service_view

SPEC = {"model": {"source": "org/model"}, "engine": {"type": "builtin"}, "resources": {"gpus": 1},
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 16,
                        "targetTokensPerSecondPerReplica": 1000}}
T0 = 1_780_000_000.0


def body(index: int, recommendations: int) -> dict[str, Any]:
    """One InferenceService as the API server returns it after some ticks."""
    name, namespace = f"svc-{index:05d}", f"team-{index % 20}"
    conditions = [{"type": kind, "status": "True", "reason": "SignalsRead", "message": "signals read from Prometheus",
                   "lastTransitionTime": "2026-12-02T07:00:00Z", "observedGeneration": 1}
                  for kind in ("Ready", "Progressing", "Degraded", "MetricsAvailable", "ScalingActive",
                               "ScalingLimited")]
    return {
        "apiVersion": "tokenscale.io/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace, "uid": f"0000{index:08d}-aaaa-bbbb-cccc-dddddddddddd",
                     "generation": 1, "resourceVersion": str(100_000 + index)},
        "spec": SPEC,
        "status": {
            "observedGeneration": 1, "phase": "Ready", "replicas": 3, "readyReplicas": 3, "desiredReplicas": 3,
            "recommendedReplicas": 3, "endpoint": f"http://{name}.{namespace}.svc.cluster.local:8000",
            "selector": f"tokenscale.io/service={name}", "conditions": conditions,
            "signals": {"tokensPerSecond": 2400.0 + index % 97, "tokensPerSecondLong": 2300.5,
                        "promptTokensPerSecond": 900.2, "queueDepth": 0.0, "runningRequests": 12.0,
                        "kvCacheUsage": 0.31, "ttftP90Seconds": 0.25, "sampleAgeSeconds": 1.2,
                        "sampledAt": "2026-12-02T07:30:00Z", "heartbeatSeconds": 20.0},
            "autoscaler": {"recommendations": [{"time": T0 + 5 * k, "replicas": 3} for k in range(recommendations)],
                           "lastScaleUp": T0, "lastQueueDepth": 0.0, "lastQueueTime": T0 + 100,
                           "demandExtremes": [{"time": T0 + 7 * k, "tokensPerSecond": 2000.0 + k}
                                              for k in range(6)]},
            "decisions": [{"time": f"2026-12-02T07:{k:02d}:00Z", "fromReplicas": 2, "toReplicas": 3,
                           "recommendations": {"tokens": 3, "queue": 1, "headroom": 2}, "limitedBy": "",
                           "reason": "2400 tokens/s (short window) needs 3 replica(s) at 1000 tokens/s each"}
                          for k in range(10)],
            "costPerMillionTokens": 1.2345,
        },
    }


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


def old_view(body: Mapping[str, Any], **_: Any) -> ServiceView:
    """The projection before the views were slimmed: the spec and the whole status, copied."""
    meta = body["metadata"]
    return ServiceView(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"],
                       generation=meta.get("generation"), resource_version=str(meta["resourceVersion"]),
                       deleting=False, spec=_copy(body["spec"]), status=_copy(body["status"]))


class OldWatchedState(WatchedState):
    def service_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        self.services[(meta["namespace"], meta["name"])] = old_view(body)


def measure(state_type: Callable[[], WatchedState], bodies: list[dict[str, Any]]) -> tuple[float, float]:
    """(MB the views hold, µs of CPU per watch event)."""
    gc.collect()
    tracemalloc.start()
    state = state_type()
    for item in bodies:
        state.service_event("ADDED", item)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    started = time.process_time()
    for item in bodies:  # each status write comes back as a MODIFIED event
        state.service_event("MODIFIED", item)
    per_event = (time.process_time() - started) / len(bodies) * 1e6
    del state
    return held / 1e6, per_event


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--recommendations", type=int, default=20,
                        help="entries in each service's status.autoscaler.recommendations")
    args = parser.parse_args(argv)
    bodies = [body(index, args.recommendations) for index in range(args.services)]
    assert service_view(bodies[0]).status["signals"] == bodies[0]["status"]["signals"]
    old_mb, old_us = measure(OldWatchedState, bodies)
    new_mb, new_us = measure(WatchedState, bodies)
    print(f"watched InferenceServices: {args.services}")
    print(f"{'design':>6} {'MB held':>8} {'bytes/service':>13} {'µs CPU/event':>12}")
    for design, mb, us in (("old", old_mb, old_us), ("new", new_mb, new_us)):
        print(f"{design:>6} {mb:>8.1f} {mb * 1e6 / args.services:>13.0f} {us:>12.1f}")
    print(f"ratio old/new: memory {old_mb / new_mb:.1f}x, CPU per event {old_us / new_us:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
