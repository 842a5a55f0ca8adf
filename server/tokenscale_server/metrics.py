"""Prometheus metrics under vLLM's names, so vLLM dashboards and the operator's vLLM adapter read us.

Served in the classic text format (`text/plain; version=0.0.4`): asked for OpenMetrics,
prometheus_client would rewrite `vllm:` to `vllm_` for Prometheus 2.x scrapers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                240.0, 480.0, 960.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class ServerMetrics:
    def __init__(self, model_name: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        labels = ["model_name"]
        r = self.registry

        def gauge(name, doc):
            return Gauge(name, doc, labels, registry=r).labels(model_name)

        def counter(name, doc):
            return Counter(name, doc, labels, registry=r).labels(model_name)

        def histogram(name, doc, buckets):
            return Histogram(name, doc, labels, buckets=buckets, registry=r).labels(model_name)

        self.running = gauge("vllm:num_requests_running", "Requests in the running batch (prefill or decode).")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting for a free slot.")
        self.kv_cache_usage = gauge("vllm:kv_cache_usage_perc", "Fraction of KV-cache slots in use, 0..1.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Tokens generated.")
        self.preemptions = counter("vllm:num_preemptions", "Preemptions (a slot cache never preempts).")
        self._success = Counter("vllm:request_success", "Finished requests by reason.",
                                ["model_name", "finished_reason"], registry=r)
        for reason in ("stop", "length", "abort", "error"):
            self._success.labels(model_name, reason)
        self.model_name = model_name
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token.", _LATENCY_BUCKETS)
        self.inter_token = histogram("vllm:inter_token_latency_seconds", "Time between output tokens.",
                                     _LATENCY_BUCKETS)
        self.time_per_output_token = histogram("vllm:time_per_output_token_seconds",
                                               "Time per output token (older vLLM name).", _LATENCY_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", _E2E_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds", "Time spent waiting for a slot.",
                                    _E2E_BUCKETS)
        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens", "Prompt tokens per request.",
                                               _TOKEN_BUCKETS)
        self.request_generation_tokens = histogram("vllm:request_generation_tokens",
                                                   "Generated tokens per request.", _TOKEN_BUCKETS)

    def finished(self, reason: str) -> None:
        self._success.labels(self.model_name, reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
