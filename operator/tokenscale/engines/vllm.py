"""vLLM's OpenAI-compatible server (image vllm/vllm-openai; its entrypoint is `vllm serve`).

Flags per vLLM's engine arguments; /health answers once the engine is up (the server does not
listen before the model is loaded); Prometheus metrics on /metrics of the same port.
"""

from __future__ import annotations

from tokenscale.api.models import InferenceServiceSpec
from tokenscale.engines.base import EngineAdapter, flag


class VllmAdapter(EngineAdapter):
    engine = "vllm"
    image = "vllm/vllm-openai:v0.11.0"
    runs_as_non_root = True  # works as any uid given a writable HOME and HF_HOME

    def engine_args(self, spec: InferenceServiceSpec) -> list[str]:
        return [
            "--model", spec.model.source,
            "--served-model-name", self.served_name(spec),
            "--host", "0.0.0.0",
            "--port", str(self.port),
            "--max-num-seqs", str(spec.engine.max_batch_size),
            *flag("--max-model-len", spec.engine.max_model_len),
            "--tensor-parallel-size", str(max(1, spec.resources.gpus)),
            *flag("--revision", spec.model.revision),
        ]  # fmt: skip
