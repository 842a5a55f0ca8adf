"""Hugging Face Text Generation Inference (its image's entrypoint is text-generation-launcher).

`--num-shard` is TGI's tensor parallelism; `--max-concurrent-requests` bounds the batch and
queue (beyond it TGI answers 429); /health and /metrics share the HTTP port.
"""

from __future__ import annotations

from typing import Any

from tokenscale.api.models import InferenceServiceSpec
from tokenscale.engines.base import EngineAdapter, flag


class TgiAdapter(EngineAdapter):
    engine = "tgi"
    image = "ghcr.io/huggingface/text-generation-inference:3.3.6"

    def engine_args(self, spec: InferenceServiceSpec) -> list[str]:
        shards = max(1, spec.resources.gpus)
        return [
            "--model-id", spec.model.source,
            "--hostname", "0.0.0.0",
            "--port", str(self.port),
            "--max-concurrent-requests", str(spec.engine.max_batch_size),
            *(["--num-shard", str(shards)] if spec.resources.gpus else []),
            *flag("--max-total-tokens", spec.engine.max_model_len),
            *flag("--revision", spec.model.revision),
        ]  # fmt: skip

    def extra_env(self, spec: InferenceServiceSpec) -> list[dict[str, Any]]:
        # Older TGI releases read the token under its former name.
        token = spec.secrets.hugging_face_token
        if token is None:
            return []
        return [{"name": "HUGGING_FACE_HUB_TOKEN",
                 "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}}]
