"""What the local closed loop runs: the demo's InferenceService and its load.

The per-replica target is calibrated to one tiny-server process on the 2-core development
machine (docs/demo.md); the built-in ramp and a trace's thinning are scaled to it, so the run
shows a rise and a fall whatever the target.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenscale.api import API_VERSION, KIND
from tokenscale.local import loadgen
from tokenscale.local.report import Sample

# One tiny-server process (1 torch thread, max batch 8) on the 2-core development machine
# served about 400 generated tokens/s at a TTFT p99 under 0.1 s, 450 saturated (docs/demo.md):
# the target sits a little below, so a replica is added before its queue builds.
CALIBRATED_TOKENS_PER_SECOND = 350.0
MEAN_OUTPUT_TOKENS = 48  # of the built-in ramp (outputs 32..64 tokens)


LEARNED_CAPACITY = {
    "slo": {"ttftSeconds": 1.0, "percentile": 99},
    "capacity": {"source": "Learned", "maxChangePerHour": 100},
    "metricsStaleAfterSeconds": 10,  # also how long an observation must hold (4 s rate windows here)
}


@dataclass
class DemoConfig:
    duration: float = 180.0  # seconds of load
    trace: Path | None = None  # a request trace CSV, time-compressed onto `duration`
    trace_mean_rps: float | None = None  # thin the trace to this mean rate (None: derived)
    json_out: Path | None = None
    plot_out: Path | None = Path("tokenscale-demo.png")
    workdir: Path | None = None  # None: a fresh temporary directory, removed at the end
    model_cache: Path | None = None  # None: ~/.cache/tokenscale/tiny-model-v<recipe>
    namespace: str = "demo"
    name: str = "tiny-chat"
    served_name: str = "tiny"
    tick_seconds: float = 2.0
    scrape_seconds: float = 1.0
    rate_window: str = "4s"  # the operator's short rate() window: 4 scrapes, reacts within seconds
    long_rate_window: str = "60s"
    min_replicas: int = 1
    max_replicas: int = 3
    target_tokens_per_second: float = CALIBRATED_TOKENS_PER_SECOND
    # learn the capacity at a 1 s TTFT p99 (autoscaling.capacity.source: Learned), the target above
    # being where it starts; the demo's short windows let it settle in seconds, not minutes
    learned_capacity: bool = False
    target_queue_depth: float = 4.0
    max_batch: int = 8
    scale_up_stabilization: int = 0
    scale_down_stabilization: int = 20
    peak_load: float = 1.8  # the ramp's plateau, in replicas' worth of target capacity
    idle_load: float = 0.3
    settle_seconds: float = 0.0  # after the load, wait up to this long for the minimum again
    max_concurrency: int = 96
    live: bool | None = None  # None: a live view when stdout is a terminal
    seed: int = 0
    on_sample: Callable[[Sample], None] | None = field(default=None, repr=False)

    def inference_service(self, model_dir: Path) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "model": {"source": str(model_dir), "servedName": self.served_name},
                "engine": {"type": "builtin", "maxBatchSize": self.max_batch},
                "resources": {"gpus": 0},
                "autoscaling": {
                    "minReplicas": self.min_replicas,
                    "maxReplicas": self.max_replicas,
                    "targetTokensPerSecondPerReplica": self.target_tokens_per_second,
                    "targetQueueDepthPerReplica": self.target_queue_depth,
                    "backlogDrainSeconds": 10,
                    "scaleUp": {
                        "stabilizationSeconds": self.scale_up_stabilization,
                        "maxStepPercent": 100,
                        "maxStepPods": 2,
                    },
                    "scaleDown": {
                        "stabilizationSeconds": self.scale_down_stabilization,
                        "maxStepPercent": 50,
                        "maxStepPods": 1,
                    },
                    **(LEARNED_CAPACITY if self.learned_capacity else {}),
                },
            },
        }

    def planned_tokens_per_second(self, t: float) -> float | None:
        """The built-in ramp's offered output tokens/s at t (None for a trace: no rate function)."""
        if self.trace is not None:
            return None
        capacity_rps = self.target_tokens_per_second / MEAN_OUTPUT_TOKENS
        level = loadgen.RampShape().level(t / self.duration)
        rps = capacity_rps * (self.idle_load + (self.peak_load - self.idle_load) * level)
        return rps * MEAN_OUTPUT_TOKENS

    def plan(self) -> list[loadgen.PlannedRequest]:
        capacity_rps = self.target_tokens_per_second / MEAN_OUTPUT_TOKENS
        if self.trace is not None:
            if self.trace_mean_rps is not None:
                return loadgen.from_trace(self.trace, self.duration, mean_rps=self.trace_mean_rps, seed=self.seed)
            # Thin to one replica's worth on average (bursts then need more), counting a prompt
            # token as a quarter of a generated one: prompts cost the CPU too (prefill).
            every = loadgen.from_trace(self.trace, self.duration, seed=self.seed)
            mean_cost = sum(r.output_tokens + r.prompt_tokens / 4 for r in every) / len(every)
            mean_rps = self.target_tokens_per_second / mean_cost
            return loadgen.from_trace(self.trace, self.duration, mean_rps=mean_rps, seed=self.seed)
        return loadgen.ramp(
            self.duration,
            idle_rps=capacity_rps * self.idle_load,
            peak_rps=capacity_rps * self.peak_load,
            seed=self.seed,
        )


def default_model_cache() -> Path:
    from tokenscale_server.tiny_model import RECIPE_VERSION

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tokenscale" / f"tiny-model-v{RECIPE_VERSION}"
