"""A simulator replica profile fitted from a calibration's measured points, pure.

The simulator's replica (sim/profiles.py) decodes one token for every running sequence per step,
`step = decode_base + decode_per_sequence x batch (+ per KV token)`, and prefills prompts at
`prefill_tokens_per_s`. From the outside of an endpoint:
- step time vs batch: each step's mean inter-token latency against its mean running batch (the
  server's gauge, else the requests the client saw decoding), a least-squares line;
- prefill rate: prompt tokens over the median TTFT of the lightest step (so the simulated TTFT at
  low load is the measured one, HTTP overhead included);
- batch limit: the largest running batch seen (a queue formed beyond it), unless given;
- KV capacity: tokens in use over the KV-use gauge, unless given; never below what the batch
  limit needs, since the batch limit was what bound;
- finally the replica's speed is scaled so the profile's saturation throughput equals the most
  tokens/s a saturated step delivered (the same correction the built-in cpu-tiny profile carries),
  or, when no step ran saturated to its end, is at least the most tokens/s any step delivered:
  the decode step alone, or the prefill rate with it when the measured TTFT (HTTP time included)
  would leave decode no time at that throughput.
With one length mix, per-sequence and per-KV-token costs cannot be told apart: both are folded
into the per-sequence term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenscale.sim.profiles import FILE_DEFAULTS, ReplicaProfile

from .search import ERRORS, PASS, SATURATED, Search, Suggestion


@dataclass(frozen=True)
class FitOptions:
    name: str
    description: str = ""
    startup_s: float | None = None  # not measured by calibrate: given by the user, else the file default
    max_batch: int | None = None
    kv_capacity_tokens: int | None = None


def fit_profile(search: Search, suggestion: Suggestion, options: FitOptions) -> ReplicaProfile:
    usable = [(p, v) for p, v in zip(search.points, search.verdicts, strict=True)
              if v != ERRORS and p.output_tokens > 0]
    if not usable or suggestion.chosen is None:
        raise ValueError("no measured point to fit a profile to")
    chosen = suggestion.chosen
    input_tokens, output_tokens = chosen.input_tokens, chosen.output_tokens

    pairs = [(_batch(p), p.itl_mean_s) for p, _ in usable if p.itl_mean_s is not None and _batch(p) > 0]
    base, per_sequence = _line(pairs)

    lightest = min((p for p, _ in usable), key=lambda p: p.rate)
    prefill = input_tokens / max(lightest.ttft_p50_s, 1e-4)

    seen_batch = max((p.max_running or 0.0 for p, _ in usable), default=0.0)
    if seen_batch <= 0:
        seen_batch = max(math.ceil(p.decoding) for p, _ in usable)
    max_batch = options.max_batch or max(1, round(seen_batch))

    kv = options.kv_capacity_tokens
    if kv is None:
        estimates = [(p.running or 0.0) * (p.input_tokens + p.output_tokens / 2) / p.kv_usage
                     for p, _ in usable if p.kv_usage and p.kv_usage > 0.05 and p.running]
        kv = round(max(estimates, default=0.0))
        kv = max(kv, math.ceil(max_batch * (input_tokens + output_tokens)))

    profile = ReplicaProfile(
        name=options.name,
        description=options.description,
        decode_base_s=base,
        decode_per_sequence_s=per_sequence,
        decode_per_kv_token_s=0.0,
        prefill_tokens_per_s=prefill,
        max_batch=max_batch,
        kv_capacity_tokens=kv,
        startup_s=FILE_DEFAULTS["startup_s"] if options.startup_s is None else options.startup_s,
        startup_spread_s=FILE_DEFAULTS["startup_spread_s"] if options.startup_s is None else 0.0,
        ttft_target_s=search.slo.ttft_s,
    )
    saturated = [p.tokens_per_second for p, v in usable if v == SATURATED]
    delivered = max((p.tokens_per_second for p, _ in usable if not p.cut_short), default=0.0)
    if saturated:
        profile = _match_capacity(profile, max(saturated), input_tokens, output_tokens)
    elif profile.capacity_tokens_per_s(input_tokens, output_tokens) < delivered:
        # no step ran saturated to its end, but the replica did deliver this much: at least that
        profile = _match_capacity(profile, delivered, input_tokens, output_tokens)
    return profile


def _batch(point) -> float:
    return point.running if point.running is not None else point.decoding


def _line(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares itl = base + slope x batch; a flat line when the batches did not vary or the
    slope came out negative (noise): the step time never falls as the batch grows."""
    if not pairs:
        raise ValueError("no step measured an inter-token latency")
    n = len(pairs)
    mean_b = sum(b for b, _ in pairs) / n
    mean_t = sum(t for _, t in pairs) / n
    spread = sum((b - mean_b) ** 2 for b, _ in pairs)
    slope = sum((b - mean_b) * (t - mean_t) for b, t in pairs) / spread if spread > 1e-9 else 0.0
    if slope <= 0:
        return max(mean_t, 1e-5), 0.0
    base = mean_t - slope * mean_b
    if base <= 0:  # the line through the origin's side: keep a small positive base, refit the slope
        base = 1e-5
        slope = max(0.0, sum(b * (t - base) for b, t in pairs) / sum(b * b for b, _ in pairs))
    return base, slope


def _match_capacity(profile: ReplicaProfile, measured_tps: float, input_tokens: float,
                    output_tokens: float) -> ReplicaProfile:
    """Scale the replica's speed so it saturates at the measured tokens/s (bounded 10x either way):
    the decode step alone while it keeps the prefill's share below 90% of a request's time (the
    low-load TTFT then stays as measured); else the prefill rate with it, since a TTFT measured
    from outside holds HTTP and tokenizer time that does not occupy the engine."""
    if measured_tps <= 0 or output_tokens <= 1 or profile.capacity_tokens_per_s(input_tokens, output_tokens) <= 0:
        return profile
    batch = profile.saturated_batch(input_tokens, output_tokens)
    prefill_s = input_tokens / profile.prefill_tokens_per_s
    wanted_s = output_tokens / measured_tps  # seconds per request at the measured capacity
    step = profile.step_seconds(batch, batch * (input_tokens + output_tokens / 2))
    decode_s = (output_tokens - 1) * step / batch
    if wanted_s - prefill_s > 0.1 * wanted_s:
        factor = min(10.0, max(0.1, (wanted_s - prefill_s) / decode_s))
        return profile.with_overrides(decode_base_s=profile.decode_base_s * factor,
                                      decode_per_sequence_s=profile.decode_per_sequence_s * factor)
    factor = min(10.0, max(0.1, wanted_s / (prefill_s + decode_s)))
    return profile.with_overrides(decode_base_s=profile.decode_base_s * factor,
                                  decode_per_sequence_s=profile.decode_per_sequence_s * factor,
                                  prefill_tokens_per_s=profile.prefill_tokens_per_s / factor)


def calibration_record(search: Search, suggestion: Suggestion) -> dict:
    """What the profile was fitted from, kept in the file for the reader (not read back)."""
    chosen = suggestion.chosen
    return {
        "ttftSeconds": search.slo.ttft_s,
        "itlSeconds": search.slo.itl_s,
        "percentile": search.slo.percentile,
        "targetTokensPerSecondPerReplica": suggestion.target_tokens_per_second,
        "targetQueueDepthPerReplica": suggestion.target_queue_depth,
        "meanInputTokens": None if chosen is None else round(chosen.input_tokens, 1),
        "meanOutputTokens": None if chosen is None else round(chosen.output_tokens, 1),
        "maxTokensPerSecond": round(suggestion.capacity_tokens_per_second, 1),
        "points": [{"rate": round(p.rate, 4), "tokensPerSecond": round(p.tokens_per_second, 1),
                    "verdict": v} for p, v in zip(search.points, search.verdicts, strict=True)],
        "passing": sum(1 for v in search.verdicts if v == PASS),
    }
