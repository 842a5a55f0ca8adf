"""Replica profiles: the numbers that make a simulated replica behave like a real one.

A replica runs continuous batching. One decode iteration produces one token for every
sequence in the batch and takes

    step_s = decode_base_s + decode_per_sequence_s * batch + decode_per_kv_token_s * kv_tokens

(decode is memory-bound: every step reads the weights once, then each sequence's KV cache).
Prefill is compute-bound: `prefill_tokens_per_s` prompt tokens per second, time taken from
decoding. Sources and derivations of each profile are in docs/simulator.md. A profile can also
be a YAML file (`kind: ReplicaProfile`), as `tokenscale calibrate --out` writes one fitted to a
real endpoint (docs/calibrate.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path


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
    """A built-in profile by name, or a profile YAML file (`tokenscale calibrate --out`) by path."""
    if name in PROFILES:
        return PROFILES[name]
    if name.endswith((".yaml", ".yml")) or "/" in name or Path(name).is_file():
        return load_profile(name)
    raise ValueError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}, or a profile YAML file")


# --- profile files ------------------------------------------------------------------------------

PROFILE_KIND = "ReplicaProfile"

# YAML key -> (attribute, type, required). Optional keys not given keep the defaults below.
_FIELDS: dict[str, tuple[str, type, bool]] = {
    "name": ("name", str, True),
    "description": ("description", str, False),
    "decodeBaseSeconds": ("decode_base_s", float, True),
    "decodePerSequenceSeconds": ("decode_per_sequence_s", float, True),
    "decodePerKvTokenSeconds": ("decode_per_kv_token_s", float, False),
    "prefillTokensPerSecond": ("prefill_tokens_per_s", float, True),
    "maxBatch": ("max_batch", int, True),
    "kvCapacityTokens": ("kv_capacity_tokens", int, True),
    "startupSeconds": ("startup_s", float, False),
    "startupSpreadSeconds": ("startup_spread_s", float, False),
    "drainTimeoutSeconds": ("drain_timeout_s", float, False),
    "maxWaiting": ("max_waiting", int, False),
    "gpusPerReplica": ("gpus_per_replica", int, False),
    "ttftTargetSeconds": ("ttft_target_s", float, False),
    "gpuPricePerHour": ("gpu_price_per_hour", float, False),
}
# A profile file that does not say how long a replica takes to start gets the H100 profile's
# figure (vLLM loading an 8B model): calibration measures a running endpoint, not a cold start.
FILE_DEFAULTS = {"description": "", "decode_per_kv_token_s": 0.0, "startup_s": 90.0, "startup_spread_s": 30.0}
_MAY_BE_ZERO = {"decode_per_kv_token_s", "decode_per_sequence_s", "startup_s", "startup_spread_s"}


class ProfileError(ValueError):
    """A profile file that cannot be used, with the file and the field named."""


def profile_from_dict(document: object, *, source: str = "profile") -> ReplicaProfile:
    """Validate a profile document (the YAML's mapping) and build the profile."""
    if not isinstance(document, dict):
        raise ProfileError(f"{source}: expected a mapping with kind: {PROFILE_KIND}, got {type(document).__name__}")
    kind = document.get("kind", PROFILE_KIND)
    if kind != PROFILE_KIND:
        raise ProfileError(f"{source}: kind must be {PROFILE_KIND}, got {kind!r}")
    unknown = sorted(set(document) - set(_FIELDS) - {"kind", "calibration"})
    if unknown:
        raise ProfileError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    missing = [key for key, (_, _, required) in _FIELDS.items() if required and document.get(key) is None]
    if missing:
        raise ProfileError(f"{source}: missing required field(s) {', '.join(missing)}")
    values: dict = dict(FILE_DEFAULTS)
    for key, (attribute, kind_of, _required) in _FIELDS.items():
        if key not in document or (document[key] is None and attribute == "max_waiting"):
            continue
        values[attribute] = _typed(document[key], kind_of, f"{source}: {key}", may_be_zero=attribute in _MAY_BE_ZERO)
    if values["startup_spread_s"] > values["startup_s"]:
        raise ProfileError(f"{source}: startupSpreadSeconds ({values['startup_spread_s']:g}) exceeds "
                           f"startupSeconds ({values['startup_s']:g})")
    return ReplicaProfile(**values)


def _typed(value: object, kind_of: type, where: str, *, may_be_zero: bool):
    if kind_of is str:
        if not isinstance(value, str):
            raise ProfileError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileError(f"{where} must be a number, got {value!r}")
    if kind_of is int:
        if float(value) != int(value):
            raise ProfileError(f"{where} must be a whole number, got {value!r}")
        value = int(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not may_be_zero):
        raise ProfileError(f"{where} must be {'zero or more' if may_be_zero else 'positive'}, got {value!r}")
    return kind_of(value)


def load_profile(path: str | Path) -> ReplicaProfile:
    import yaml

    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ProfileError(f"cannot read profile {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ProfileError(f"{path}: not valid YAML: {error}") from None
    return profile_from_dict(document, source=str(path))


def profile_to_dict(profile: ReplicaProfile, calibration: dict | None = None) -> dict:
    document: dict = {"kind": PROFILE_KIND}
    for key, (attribute, _kind, _required) in _FIELDS.items():
        value = getattr(profile, attribute)
        if isinstance(value, float) and value:  # five significant figures: fitted numbers, not noise
            value = float(f"{value:.5g}")
        document[key] = value
    if calibration:
        document["calibration"] = calibration  # what it was fitted from; not read back
    return document


def dump_profile(profile: ReplicaProfile, calibration: dict | None = None) -> str:
    import yaml

    return yaml.safe_dump(profile_to_dict(profile, calibration), sort_keys=False)
