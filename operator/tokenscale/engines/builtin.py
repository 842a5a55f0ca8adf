"""tokenscale's own continuous-batching server (`tokenscale-server serve`).

Its image runs as non-root with a read-only root filesystem; it reports liveness on /health
and readiness on /ready (false while loading and while draining after SIGTERM), and exports
vLLM-compatible metrics on /metrics.
"""

from __future__ import annotations

from tokenscale import __version__
from tokenscale.api.models import InferenceServiceSpec
from tokenscale.engines.base import EngineAdapter, flag


class BuiltinAdapter(EngineAdapter):
    engine = "builtin"
    image = f"ghcr.io/tokenscale/server:{__version__}"  # `tokenscale run --default-server-image` overrides
    ready_path = "/ready"
    runs_as_non_root = True
    non_root_uid = 65532  # USER in server/Dockerfile
    read_only_root = True
    drain_seconds = 5  # the server drains itself on SIGTERM (readiness false, finish in flight)

    def command(self) -> list[str]:
        return ["tokenscale-server", "serve"]

    def engine_args(self, spec: InferenceServiceSpec) -> list[str]:
        return [
            "--model", spec.model.source,
            "--served-model-name", self.served_name(spec),
            "--host", "0.0.0.0",
            "--port", str(self.port),
            "--max-batch", str(spec.engine.max_batch_size),
            *flag("--max-model-len", spec.engine.max_model_len),
            *flag("--revision", spec.model.revision),
            "--drain-timeout", str(self.shutdown_seconds(spec)),
            # A replica given GPUs must run on one: the server exits with the reason (driver, torch's
            # CUDA) instead of serving from the CPU. Without GPUs, cpu keeps it off any GPU the node
            # exposes to every container (NVIDIA_VISIBLE_DEVICES=all in CUDA base images).
            "--device", "cuda" if spec.resources.gpus >= 1 else "cpu",
        ]  # fmt: skip
