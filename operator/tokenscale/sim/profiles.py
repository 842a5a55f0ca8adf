"""Replica profiles: the numbers that make a simulated replica behave like a real one.

A replica runs continuous batching. One decode iteration produces one token for every
sequence in the batch and takes

    step_s = decode_base_s + decode_per_sequence_s * batch + decode_per_kv_token_s * kv_tokens

(decode is memory-bound: every step reads the weights once, then each sequence's KV cache).
Prefill is compute-bound: `prefill_tokens_per_s` prompt tokens per second, time taken from
decoding. Sources and derivations of each profile are in docs/simulator.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ReplicaProfile:
    name: str
    description: str
    decode_base_s: float  # one decode iteration at batch 1, empty cache (weights read once)
    decode_per_sequence_s: float  # extra per sequence in the batch (compute, sampling)
    decode_per_kv_token_s: float  # extra per cached token read by attention
    prefill_tokens_per_s: float  # prompt tokens processed per second
    max_batch: int  # sequences in the running batch (vLLM --max-num-seqs)
    kv_capacity_tokens: int  # tokens the KV cache holds
    startup_s: float  # mean time from pod creation to ready (scheduling, image, weights, warm-up)
    startup_spread_s: float  # startup is uniform in startup_s +- spread
    drain_timeout_s: float = 120.0  # terminationGracePeriodSeconds: in-flight work after that is dropped
    max_waiting: int | None = None  # the server's queue bound (429 beyond it); None = unbounded
    gpus_per_replica: int = 1
    ttft_target_s: float = 1.0  # SLO: TTFT <= ttft_target_s + the request's own prefill time
    gpu_price_per_hour: float = 2.5

    def step_seconds(self, batch: float, kv_tokens: float) -> float:
        return self.decode_base_s + self.decode_per_sequence_s * batch + self.decode_per_kv_token_s * kv_tokens

    def saturated_batch(self, input_tokens: float, output_tokens: float) -> float:
        """Sequences in the batch at saturation: the batch limit or the KV cache, whichever binds
        (admission reserves prompt + output tokens of KV per request)."""
        return max(1.0, min(self.max_batch, self.kv_capacity_tokens / (input_tokens + output_tokens)))

    def capacity_requests_per_s(self, input_tokens: float, output_tokens: float) -> float:
        """Requests/s one replica completes at saturation for requests of these mean lengths.

        Per request: its prefill (input / prefill rate) plus its share of `output` decode steps
        shared by the batch: 1/r = input/prefill + output * step(B, kv) / B."""
        batch = self.saturated_batch(input_tokens, output_tokens)
        kv_in_use = batch * (input_tokens + output_tokens / 2)
        step = self.step_seconds(batch, kv_in_use)
        seconds_per_request = input_tokens / self.prefill_tokens_per_s + (output_tokens - 1) * step / batch
        return 1.0 / seconds_per_request

    def capacity_tokens_per_s(self, input_tokens: float, output_tokens: float) -> float:
        """Generated tokens/s one replica sustains at saturation (the ceiling a target sits under)."""
        return self.capacity_requests_per_s(input_tokens, output_tokens) * output_tokens

    def with_overrides(self, **changes) -> ReplicaProfile:
        return replace(self, **changes)


# Llama-3.1-8B-Instruct in bf16 on one H100 SXM 80GB with vLLM; derivation in docs/simulator.md.
H100_LLAMA_8B = ReplicaProfile(
    name="h100-llama-8b",
    description="Llama-3.1-8B bf16 on one H100 SXM 80GB, vLLM-like engine (published figures)",
    decode_base_s=0.0070,  # 16.1 GB of weights / (3.35 TB/s x ~0.7 achieved)
    decode_per_sequence_s=0.000035,  # 16 GFLOP per token at ~45% of 989 TFLOPS bf16
    decode_per_kv_token_s=5.6e-8,  # 128 KiB of KV per token / (3.35 TB/s x ~0.7)
    prefill_tokens_per_s=18_000.0,  # compute-bound prefill incl. attention, ~35% MFU
    max_batch=256,  # vLLM's default --max-num-seqs
    kv_capacity_tokens=400_000,  # (80 GB x 0.9 - 16.1 GB weights - ~4 GB activations) / 128 KiB
    startup_s=90.0,  # image cached, weights from a PVC, CUDA graphs captured
    startup_spread_s=30.0,
    drain_timeout_s=120.0,
    max_waiting=None,
    ttft_target_s=2.0,  # MLPerf Inference's Llama-3.1-8B server scenario: TTFT 2 s
    gpu_price_per_hour=2.5,
)

# tokenscale's own batching server running the tiny seeded test model (`tokenscale-server tiny-model`)
# on one CPU thread; measured through the server's engine (docs/simulator.md, "Calibration of cpu-tiny").
CPU_TINY = ReplicaProfile(
    name="cpu-tiny",
    description="tokenscale's batching server, tiny random Llama, CPU, 1 thread (measured)",
    # closed-batch step times x 1.35: the factor that makes the simulator reproduce the server
    # benchmark's open-loop run (2,287 useful tok/s, TTFT p50 41 ms / p99 272 ms)
    decode_base_s=0.00286,  # 1.35 x 2.12 ms (2.25 ms a step at batch 1)
    decode_per_sequence_s=0.000121,  # 1.35 x 0.090 ms (6.2 ms a step at batch 32, short prompts)
    decode_per_kv_token_s=6.6e-7,  # 1.35 x 0.49 us (~10 ms at batch 32 with 256-token prompts)
    prefill_tokens_per_s=8_900.0,  # 12,150 / 1.35 (32 prompts of 512 tokens in 1.35 s)
    max_batch=32,  # the server's --max-batch (KV slots)
    kv_capacity_tokens=32 * 1024,  # slots x --max-model-len
    startup_s=5.0,  # process start to /ready: 3.5-7.7 s measured
    startup_spread_s=2.0,
    drain_timeout_s=30.0,  # the server's --drain-timeout
    max_waiting=256,  # the server's --max-waiting (429 beyond)
    ttft_target_s=1.0,
    gpu_price_per_hour=0.1,  # price of the CPU share, so the $ column stays meaningful
)

PROFILES: dict[str, ReplicaProfile] = {p.name: p for p in (H100_LLAMA_8B, CPU_TINY)}


def get_profile(name: str) -> ReplicaProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
