"""The Prometheus metric names behind each canonical signal, per engine (pure data).

Every name is listed under each spelling Prometheus may store it as. vLLM and SGLang name
their metrics `vllm:x` / `sglang:x`, but prometheus_client rewrites the colon to an
underscore when a Prometheus 2.x scrape negotiates OpenMetrics (client_python#1177), so pods
in the field show up as `vllm:x` or `vllm_x`; tokenscale.metrics matches both and counts a
pod once. TensorRT-LLM's trtllm-serve exports `trtllm_x` on /prometheus/metrics
(tensorrt_llm/metrics/collector.py); NVIDIA Dynamo's older releases re-exported the same
metrics as `trtllm:x`. TGI (Rust) names never carry a colon.

Histograms are given by their base name: queries add `_bucket`, `_sum` or `_count`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenscale.api.models import EngineType


@dataclass(frozen=True)
class EngineMetricNames:
    """One engine family's metric names; each field lists every spelling (empty: not exported)."""

    family: str  # engines that share names share one query per signal
    generated_tokens: tuple[str, ...]  # counter of generated tokens (or a histogram's _sum)
    prompt_tokens: tuple[str, ...]  # counter of prompt tokens (or a histogram's _sum)
    queue_depth: tuple[str, ...]  # gauge: requests waiting
    running_requests: tuple[str, ...]  # gauge: requests in the running batch
    finished_requests: tuple[str, ...] = ()  # counter of finished requests (mean output length)
    kv_cache_usage: tuple[str, ...] = ()  # gauge 0..1
    ttft_histogram: tuple[str, ...] = ()  # histogram base name, seconds


def both_spellings(name: str) -> tuple[str, ...]:
    """`prefix:x` and `prefix_x`: the name as exported and as escaped for OpenMetrics."""
    escaped = name.replace(":", "_")
    return (name,) if escaped == name else (name, escaped)


def _prefixed(prefix: str, suffix: str) -> tuple[str, ...]:
    return both_spellings(f"{prefix}:{suffix}")


_VLLM = EngineMetricNames(
    family="vllm",
    generated_tokens=_prefixed("vllm", "generation_tokens_total"),
    prompt_tokens=_prefixed("vllm", "prompt_tokens_total"),
    queue_depth=_prefixed("vllm", "num_requests_waiting"),
    running_requests=_prefixed("vllm", "num_requests_running"),
    finished_requests=_prefixed("vllm", "request_success_total"),
    kv_cache_usage=_prefixed("vllm", "kv_cache_usage_perc"),
    ttft_histogram=_prefixed("vllm", "time_to_first_token_seconds"),
)

_SGLANG = EngineMetricNames(
    family="sglang",
    generated_tokens=_prefixed("sglang", "generation_tokens_total"),
    prompt_tokens=_prefixed("sglang", "prompt_tokens_total"),
    queue_depth=_prefixed("sglang", "num_queue_reqs"),
    running_requests=_prefixed("sglang", "num_running_reqs"),
    finished_requests=_prefixed("sglang", "num_requests_total"),
    kv_cache_usage=_prefixed("sglang", "token_usage"),
    ttft_histogram=_prefixed("sglang", "time_to_first_token_seconds"),
)

# TGI counts tokens only in per-request histograms: their _sum grows by each request's tokens.
# It exports neither a KV-cache gauge nor a time-to-first-token histogram.
_TGI = EngineMetricNames(
    family="tgi",
    generated_tokens=("tgi_request_generated_tokens_sum",),
    prompt_tokens=("tgi_request_input_length_sum",),
    queue_depth=("tgi_queue_size",),
    running_requests=("tgi_batch_current_size",),
    finished_requests=("tgi_request_generated_tokens_count",),
)

# trtllm-serve (TensorRT-LLM >= 1.1, iteration stats on): the underscore name is its own; the
# colon spelling is how NVIDIA Dynamo 0.7 re-exported it.
_TRTLLM = EngineMetricNames(
    family="trtllm",
    generated_tokens=("trtllm_generation_tokens_total", "trtllm:generation_tokens_total"),
    prompt_tokens=("trtllm_prompt_tokens_total", "trtllm:prompt_tokens_total"),
    queue_depth=("trtllm_num_requests_waiting", "trtllm:num_requests_waiting"),
    running_requests=("trtllm_num_requests_running", "trtllm:num_requests_running"),
    finished_requests=("trtllm_request_success_total", "trtllm:request_success_total"),
    kv_cache_usage=("trtllm_kv_cache_utilization", "trtllm:kv_cache_utilization"),
    ttft_histogram=("trtllm_time_to_first_token_seconds", "trtllm:time_to_first_token_seconds"),
)

# The builtin server exports vLLM's names, so every vLLM dashboard and this one family serve both.
METRIC_NAMES: dict[EngineType, EngineMetricNames] = {
    EngineType.builtin: _VLLM,
    EngineType.vllm: _VLLM,
    EngineType.sglang: _SGLANG,
    EngineType.tgi: _TGI,
    EngineType.trtllm: _TRTLLM,
}


def metric_names(engine: EngineType | str) -> EngineMetricNames:
    """The metric names of an engine type (`builtin`, `vllm`, `sglang`, `tgi`, `trtllm`)."""
    return METRIC_NAMES[EngineType(engine)]


def families() -> dict[str, EngineMetricNames]:
    """Each distinct family once (builtin and vllm share one)."""
    return {names.family: names for names in METRIC_NAMES.values()}
