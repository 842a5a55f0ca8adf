"""TensorRT-LLM's OpenAI-compatible `trtllm-serve` (NGC release image).

The model is a hub id, a checkpoint or an engine directory; `--tp_size` shards it over the
replica's GPUs. /health on the HTTP port; Prometheus text on /prometheus/metrics.
"""

from __future__ import annotations

from tokenscale.api.models import InferenceServiceSpec
from tokenscale.engines.base import EngineAdapter, flag


class TrtllmAdapter(EngineAdapter):
    engine = "trtllm"
    image = "nvcr.io/nvidia/tensorrt-llm/release:1.0.0"
    metrics_path = "/prometheus/metrics"

    def command(self) -> list[str]:
        return ["trtllm-serve"]

    def engine_args(self, spec: InferenceServiceSpec) -> list[str]:
        return [
            spec.model.source,
            "--host", "0.0.0.0",
            "--port", str(self.port),
            "--tp_size", str(max(1, spec.resources.gpus)),
            "--max_batch_size", str(spec.engine.max_batch_size),
            *flag("--max_seq_len", spec.engine.max_model_len),
        ]  # fmt: skip
