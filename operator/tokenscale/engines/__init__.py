"""Engine adapters: the serving container and metrics endpoint of each engine (pure)."""

from __future__ import annotations

from tokenscale.api.models import EngineType
from tokenscale.engines.base import EngineAdapter, MetricsEndpoint
from tokenscale.engines.builtin import BuiltinAdapter
from tokenscale.engines.sglang import SglangAdapter
from tokenscale.engines.tgi import TgiAdapter
from tokenscale.engines.trtllm import TrtllmAdapter
from tokenscale.engines.vllm import VllmAdapter

ADAPTERS: dict[EngineType, EngineAdapter] = {
    EngineType.builtin: BuiltinAdapter(),
    EngineType.vllm: VllmAdapter(),
    EngineType.sglang: SglangAdapter(),
    EngineType.tgi: TgiAdapter(),
    EngineType.trtllm: TrtllmAdapter(),
}


def adapter_for(engine: EngineType | str) -> EngineAdapter:
    return ADAPTERS[EngineType(engine)]


__all__ = ["ADAPTERS", "EngineAdapter", "MetricsEndpoint", "adapter_for"]
