"""End-to-end: the whole local closed loop (`tokenscale demo`) under a load step.

Real everything except the cluster: the emulated Kubernetes API, the operator (`tokenscale run`),
the local kubelet running `tokenscale-server` processes with the tiny model, the router, a real
Prometheus scraping every second, and the load generator replaying a trace with one step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokenscale.local.children import processes_mentioning

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.timeout(240)]

TICK = 2.0
SCRAPE = 1.0
KUBELET_POLL = 0.25  # the resolution of the measured reaction (when the kubelet saw the change)
TARGET = 350.0  # tokens/s per replica (the demo's calibration)
STABILIZATION = 10
IDLE_S, STEP_S = 8.0, 20.0
STEP = 4.0  # replicas' worth of load: a queue builds at once, on a busy or an idle machine
OUTPUT_TOKENS = 48


def _tokenscale() -> list[str]:
    beside = Path(sys.executable).parent / "tokenscale"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "tokenscale.cli"]


def _step_trace(path: Path) -> float:
    """A trace: 0.3 replicas' worth of load, then a step to STEP replicas' worth. Returns its span."""
    rps = TARGET / OUTPUT_TOKENS
    rows, t = [], 0.0
    for rate, until in ((0.3 * rps, IDLE_S), (STEP * rps, IDLE_S + STEP_S)):
        while t < until:
            rows.append(f"{t:.3f},512,{OUTPUT_TOKENS}")  # the demo scales prompts to 512/16 = 32 tokens
            t += 1 / rate
    path.write_text("timestamp_s,input_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    return float(rows[-1].split(",")[0])


def _demo(tmp_path: Path, model: Path, *extra: str) -> list[str]:
    return [
        *_tokenscale(), "demo", "--no-live",
        "--workdir", str(tmp_path / "work"),
        "--model-cache", str(model),
        "--tick-seconds", str(TICK),
        "--rate-window", "4s",
        "--target-tokens-per-second", str(TARGET),
        "--scale-down-stabilization", str(STABILIZATION),
        "--max-replicas", "2",
        *extra,
    ]  # fmt: skip


def _left_behind(tmp_path: Path, model: Path) -> list[int]:
    """Processes naming the run's directory (operator, Prometheus) or its model (servers)."""
    return processes_mentioning(str(tmp_path)) + processes_mentioning(str(model))


def test_load_step_scales_up_fast_and_back_down(tmp_path: Path, tiny_model: Path) -> None:
    trace = tmp_path / "step.csv"
    span = _step_trace(trace)
    out = tmp_path / "summary.json"
    started = time.monotonic()
    result = subprocess.run(
        _demo(tmp_path, tiny_model, "--trace", str(trace), "--trace-rps", "1000", "--duration", f"{span:.3f}",
              "--settle", "60", "--json", str(out), "--plot", str(tmp_path / "loop.png")),
        capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    events = summary["scale_events"]
    context = json.dumps({k: v for k, v in summary.items() if k not in ("timeline", "decisions")}, indent=1)

    # Under the step the service grows from 1 replica to at least 2, with a reason for it.
    ups = [e for e in events if e["to_replicas"] > e["from_replicas"]]
    assert ups and ups[0]["from_replicas"] == 1 and summary["max_replicas"] >= 2, context
    assert ups[0]["reason"], context
    # ... and the first scale-up comes within one tick plus two scrape intervals of the load
    # crossing capacity (timed when the kubelet saw the Deployment change, so up to one poll late).
    # The trace steps at IDLE_S, so that is the crossing; the summary's own estimate (a centred
    # window over the planned arrivals, for traces of any shape) must place it just before.
    assert IDLE_S - 1.0 <= summary["load_crossed_capacity_at_s"] <= IDLE_S, context
    assert summary["reaction_seconds"] is not None, context
    assert ups[0]["t"] - IDLE_S <= TICK + 2 * SCRAPE + KUBELET_POLL, context
    assert summary["max_ready_replicas"] >= 2, context

    # After the load stops the replicas return to the minimum, not before the stabilisation window.
    downs = [e for e in events if e["to_replicas"] < e["from_replicas"]]
    assert downs and summary["final_replicas"] == 1 and summary["final_ready_replicas"] == 1, context
    assert downs[0]["t"] >= span + STABILIZATION, context

    # No request failed except by an explicit 429 (a full queue), and most were served.
    assert summary["requests_failed"] == 0, context
    assert summary["requests_served"] + summary["requests_rejected_429"] == summary["requests_total"], context
    assert summary["requests_served"] >= 0.95 * summary["requests_total"], context
    assert summary["ttft_p50_s"] is not None and (tmp_path / "loop.png").stat().st_size > 10_000

    # Nothing it started is left: the servers, the operator and Prometheus.
    assert _left_behind(tmp_path, tiny_model) == []
    assert wall < 150, f"the closed loop took {wall:.0f} s"


def test_interrupt_stops_every_process(tmp_path: Path, tiny_model: Path) -> None:
    """Ctrl-C in the middle of a run: the demo exits and leaves no process behind."""
    proc = subprocess.Popen(
        _demo(tmp_path, tiny_model, "--duration", "120"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        replicas = tmp_path / "work" / "replicas"
        deadline = time.monotonic() + 90
        # Wait until the load runs: the operator, Prometheus and a replica are all up by then.
        while time.monotonic() < deadline and not (replicas.is_dir() and any(replicas.iterdir())):
            time.sleep(0.2)
        assert replicas.is_dir() and any(replicas.iterdir()), "no replica started"
        time.sleep(4)
        assert len(_left_behind(tmp_path, tiny_model)) >= 3  # at least a server, the operator, Prometheus
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=40)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 130, output[-3000:]
    time.sleep(0.5)
    assert _left_behind(tmp_path, tiny_model) == [], output[-3000:]
