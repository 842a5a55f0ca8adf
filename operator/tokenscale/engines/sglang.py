"""SGLang (image lmsysorg/sglang): `python3 -m sglang.launch_server`.

Metrics are off unless `--enable-metrics`; they and /health share the HTTP port.
"""

from __future__ import annotations

from tokenscale.api.models import InferenceServiceSpec
from tokenscale.engines.base import EngineAdapter, flag


class SglangAdapter(EngineAdapter):
    engine = "sglang"
    image = "lmsysorg/sglang:v0.5.4"

    def command(self) -> list[str]:
        return ["python3", "-m", "sglang.launch_server"]

    def engine_args(self, spec: InferenceServiceSpec) -> list[str]:
        return [
            "--model-path", spec.model.source,
            "--served-model-name", self.served_name(spec),
            "--host", "0.0.0.0",
            "--port", str(self.port),
            "--enable-metrics",
            "--tp", str(max(1, spec.resources.gpus)),
            "--max-running-requests", str(spec.engine.max_batch_size),
            *flag("--context-length", spec.engine.max_model_len),
            *flag("--revision", spec.model.revision),
        ]  # fmt: skip
