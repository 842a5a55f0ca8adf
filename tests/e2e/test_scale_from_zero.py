"""End-to-end: `tokenscale demo --scenario scale-from-zero`, the local loop from zero replicas with
the real activator process in front (the emulated API, the operator, Prometheus, the local kubelet
running tokenscale-server with the tiny model, the router, `tokenscale activator`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tokenscale.local.children import processes_mentioning
from tokenscale.local.scale_from_zero import ScaleFromZeroConfig

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.timeout(300)]


def _tokenscale() -> list[str]:
    beside = Path(sys.executable).parent / "tokenscale"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "tokenscale.cli"]


def test_requests_at_zero_are_held_answered_and_the_service_returns_to_zero(tmp_path: Path, tiny_model: Path):
    out = tmp_path / "summary.json"
    result = subprocess.run([
        *_tokenscale(), "demo", "--scenario", "scale-from-zero", "--json", str(out),
        "--plot", str(tmp_path / "zero.png"), "--workdir", str(tmp_path / "work"),
        "--model-cache", str(tiny_model),
    ], capture_output=True, text=True, timeout=280)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    context = json.dumps({k: v for k, v in summary.items() if k not in ("timeline", "requests")}, indent=1)
    config = ScaleFromZeroConfig()

    # Every request was answered: 200, or (the one over the activator's bound) 503 + Retry-After.
    assert summary["requests_sent"] == config.first_burst + config.max_held_requests + 1, context
    assert summary["requests_failed"] == 0, context
    assert summary["requests_rejected_503"] == 1 and summary["rejected_retry_after"] == ["5"], context
    assert summary["requests_ok"] == summary["requests_sent"] - 1, context
    rejected = [r for r in summary["requests"] if r["status"] == 503]
    assert rejected[0]["burst"] == 2, context  # the last of the second burst, over the bound
    # They were held (at most the bound), and every held stream got heartbeats while it waited.
    assert summary["held_max"] == config.max_held_requests, context
    assert summary["streams_ok"] > 0 and summary["streams_with_heartbeats"] == summary["streams_ok"], context
    assert summary["first_token_seconds_p50"] is not None, context

    # Woken at once by the held requests (well before any scrape-and-tick could), then back to zero.
    events = summary["scale_events"]
    assert [(e["from_replicas"], e["to_replicas"]) for e in events] == [(0, 1), (1, 0), (0, 1), (1, 0)], context
    assert all(w is not None and w < 2.0 for w in summary["wake_seconds"]), context
    # ... the return to zero came only after the idle window following the last answer of a burst.
    first_done = max(r["first_token_seconds"] + r["sent_at"] for r in summary["requests"] if r["burst"] == 1
                     and r["first_token_seconds"] is not None)
    assert events[1]["t"] - first_done >= config.scale_to_zero_after - 1, context
    assert summary["final_replicas"] == 0, context
    # The operator's activator EndpointSlice existed while requests were held, and was removed once
    # a replica was ready.
    held, routed = summary["held_periods_s"], summary["activator_slice_periods_s"]
    assert all(any(a <= h0 + 1 and h1 <= b + 1 for a, b in routed) for h0, h1 in held), context
    assert (tmp_path / "zero.png").stat().st_size > 10_000

    # Nothing it started is left: the activator, the operator, Prometheus, the servers.
    assert processes_mentioning(str(tmp_path)) + processes_mentioning(str(tiny_model)) == []
