"""Unit tests of the local closed loop's pure parts: load plans, the report's arithmetic, the
kubelet's translation of a built Deployment into a local command, and child supervision."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tokenscale.api import parse_spec
from tokenscale.desired.workload import deployment
from tokenscale.local.children import ChildProcesses, processes_mentioning
from tokenscale.local.demo import DemoConfig
from tokenscale.local.kubelet import (
    UnsupportedContainer,
    container_env,
    grace_seconds_of,
    local_server_command,
)
from tokenscale.local.loadgen import PlannedRequest, RampShape, RequestResult, from_trace, offered_rps, ramp
from tokenscale.local.report import (
    DecisionPoint,
    RunRecord,
    Sample,
    capacity_crossing,
    percentile,
    run_summary,
)

# --- load plans ---------------------------------------------------------------------------------


def test_ramp_follows_idle_surge_plateau_fall() -> None:
    duration, idle, peak = 200.0, 2.0, 20.0
    shape = RampShape()
    plan = ramp(duration, idle_rps=idle, peak_rps=peak, shape=shape, seed=3)
    assert plan == ramp(duration, idle_rps=idle, peak_rps=peak, shape=shape, seed=3)  # seeded
    assert [r.at for r in plan] == sorted(r.at for r in plan) and 0 <= plan[0].at and plan[-1].at < duration
    plateau = offered_rps(plan, shape.plateau_start * duration, shape.fall_start * duration)
    before = offered_rps(plan, 0, shape.surge_start * duration)
    after = offered_rps(plan, shape.idle_start * duration, duration)
    assert plateau == pytest.approx(peak, rel=0.15)
    assert before == pytest.approx(idle, rel=0.4) and after == pytest.approx(idle, rel=0.3)
    assert shape.level(0.0) == 0.0 and shape.level((shape.plateau_start + shape.fall_start) / 2) == 1.0
    assert 0 < shape.level((shape.surge_start + shape.plateau_start) / 2) < 1
    assert all(16 <= r.prompt_tokens <= 48 and 32 <= r.output_tokens <= 64 for r in plan)


def _trace(path: Path, rows: list[tuple[float, int, int]]) -> Path:
    path.write_text("timestamp_s,input_tokens,output_tokens\n" + "".join(f"{t},{i},{o}\n" for t, i, o in rows))
    return path


def test_trace_is_time_compressed_thinned_and_scaled(tmp_path: Path) -> None:
    rows = [(100.0 + i * 0.5, 2048, 1 + i % 100) for i in range(2000)]  # 1000 s at 2 req/s
    path = _trace(tmp_path / "t.csv", rows)
    kept = from_trace(path, duration=100.0)  # 10x faster, every row kept
    assert len(kept) == 2000
    assert kept[0].at == 0.0 and kept[-1].at == pytest.approx(100.0)
    assert {r.prompt_tokens for r in kept} == {128}  # 2048/16, within the tiny model's range
    assert min(r.output_tokens for r in kept) == 4 and max(r.output_tokens for r in kept) == 64
    thinned = from_trace(path, duration=100.0, mean_rps=5.0, seed=1)
    assert len(thinned) == pytest.approx(500, rel=0.1)  # 5 req/s over 100 s
    assert from_trace(path, duration=100.0, mean_rps=1000.0) == kept
    own_clock = from_trace(path)
    assert own_clock[-1].at == pytest.approx(999.5)


def test_empty_trace_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no requests"):
        from_trace(_trace(tmp_path / "e.csv", []))


# --- the report -----------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0


def _step_record() -> RunRecord:
    """1 req/s of 50 tokens for 10 s, then 20 req/s: 1000 tokens/s against one replica of 400."""
    plan = [PlannedRequest(float(t), 10, 50) for t in range(10)]
    plan += [PlannedRequest(10 + i / 20, 10, 50) for i in range(400)]
    samples = [
        Sample(float(t), 0, 0, 0, 0.0, 0.0, ready=1 if t < 18 else 2, existing=1 if t < 13 else 2,
               desired=1 if t < 13 else 2, in_flight=0)
        for t in range(40)
    ]
    results = [RequestResult(at=r.at, status=200, first_token_at=r.at + 0.1 * (i % 10), finished_at=r.at + 2,
                             output_tokens=50) for i, r in enumerate(plan)]
    results[3] = RequestResult(at=3.0, status=429, error="HTTP 429: full")
    results[4] = RequestResult(at=4.0, status=0, error="ClientConnectorError: refused")
    return RunRecord(
        duration=40, tick_seconds=2, scrape_seconds=1, target_tokens_per_second_per_replica=400,
        min_replicas=1, max_replicas_allowed=2, plan=plan, results=results, samples=samples,
        decisions=[DecisionPoint(12.5, 1, 2, "tokens", "Scaling 1 -> 2"), DecisionPoint(35, 2, 1, "tokens", "down")],
        process_seconds=55,
    )


def test_capacity_crossing_and_summary() -> None:
    record = _step_record()
    crossing = capacity_crossing(record)
    # A 2 s window centred on t holds the idle request at 9 s (50 tokens) and 50 tokens per 1/20 s
    # after 10 s: above 800 tokens (400 tokens/s) once t + 1 passes 10.75, so at t = 9.8 (a 0.1 s grid).
    assert crossing == pytest.approx(9.8, abs=0.11)
    shifted = RunRecord(**{**record.__dict__, "plan": [PlannedRequest(r.at + 5, 10, 50) for r in record.plan]})
    assert capacity_crossing(shifted) == pytest.approx(crossing + 5, abs=0.11)
    summary = run_summary(record)
    assert summary["requests_total"] == 410
    assert summary["requests_served"] == 408
    assert summary["requests_rejected_429"] == 1
    assert summary["requests_failed"] == 1 and summary["failure_kinds"] == {"ClientConnectorError": 1}
    assert summary["load_crossed_capacity_at_s"] == crossing
    assert summary["reaction_seconds"] == pytest.approx(12.5 - crossing)
    assert summary["time_to_ready_capacity_seconds"] == pytest.approx(18 - crossing)
    assert summary["max_replicas"] == 2 and summary["min_replicas"] == 1
    # TTFTs 0.0 .. 0.9 s about 41 times each (two rows replaced): nearest rank 204 of 408 is 0.5 s.
    assert summary["ttft_p50_s"] == pytest.approx(0.5) and summary["ttft_p99_s"] == pytest.approx(0.9)
    assert [e["to_replicas"] for e in summary["scale_events"]] == [2, 1]
    assert summary["replica_process_seconds"] == 55


# --- the kubelet's command for a built Deployment ---------------------------------------------------


def _built_deployment(engine: str = "builtin") -> dict:
    service = DemoConfig().inference_service(Path("/models/tiny"))
    service["spec"]["engine"]["type"] = engine
    if engine != "builtin":
        service["spec"]["resources"]["gpus"] = 1
    return deployment("tiny-chat", "demo", parse_spec(service["spec"]), replicas=1)


def test_builtin_container_runs_locally_with_its_own_arguments() -> None:
    built = _built_deployment()
    argv = local_server_command(built, 41234, "/venv/bin/tokenscale-server", extra_args=["--threads", "1"])
    assert argv[:2] == ["/venv/bin/tokenscale-server", "serve"]
    joined = " ".join(argv)
    assert "--model /models/tiny" in joined and "--served-model-name tiny" in joined
    assert "--max-batch 8" in joined and "--drain-timeout" in joined
    assert argv[-6:] == ["--host", "127.0.0.1", "--port", "41234", "--threads", "1"]
    assert "0.0.0.0" not in argv and argv.count("--port") == 1
    assert grace_seconds_of(built, 1.0) == built["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert isinstance(container_env(built), dict)


def test_other_engines_are_refused_with_a_reason() -> None:
    with pytest.raises(UnsupportedContainer, match="only the builtin engine"):
        local_server_command(_built_deployment("vllm"), 1, "tokenscale-server")


# --- child supervision ------------------------------------------------------------------------------


def test_stop_all_leaves_nothing(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker")
    children = ChildProcesses()
    # A shell that starts a grandchild: the whole process group must go.
    sleeper = f"{sys.executable} -c 'import time; time.sleep(60)' {marker}"
    children.spawn(["sh", "-c", f"{sleeper} & {sleeper}; wait"], log_path=tmp_path / "log")
    deadline = time.monotonic() + 5
    while len(processes_mentioning(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes_mentioning(marker)) >= 2
    children.stop_all(grace_seconds=2)
    assert processes_mentioning(marker) == [] and children.running == []


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL of the runtime (no cleanup can run) still takes its children down."""
    marker = str(tmp_path / "orphan")
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        import time
        from tokenscale.local.children import ChildProcesses
        ChildProcesses().spawn([sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
        print("spawned", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE)
    assert parent.stdout is not None and parent.stdout.readline().strip() == b"spawned"
    assert processes_mentioning(marker)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_mentioning(marker) == []


def test_the_ramp_crossing_is_read_from_its_rate_function() -> None:
    config = DemoConfig(duration=180, peak_load=1.8, idle_load=0.3, target_tokens_per_second=350)
    assert config.planned_tokens_per_second(0) == pytest.approx(0.3 * 350)
    assert config.planned_tokens_per_second(0.3 * 180) == pytest.approx(1.8 * 350)  # the plateau
    record = RunRecord(
        duration=180, tick_seconds=2, scrape_seconds=1, target_tokens_per_second_per_replica=350,
        min_replicas=1, max_replicas_allowed=3, plan=config.plan(),
        samples=[Sample(float(t), 0, 0, 0, 0.0, 0.0, 1, 1, 1, 0) for t in range(180)],
        offered_rate=config.planned_tokens_per_second,
    )
    # One replica's worth is reached 0.467 (= (1 - 0.3) / (1.8 - 0.3)) of the way up the surge from
    # 12% to 22% of the run: t = 180 * (0.12 + 0.0467) = 30 s.
    assert capacity_crossing(record) == pytest.approx(30.0, abs=0.11)
    assert DemoConfig(trace=Path("t.csv")).planned_tokens_per_second(10) is None
