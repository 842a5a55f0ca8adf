"""`tokenscale calibrate` against the real built-in server on the tiny model (CPU, one thread).

The server has 8 batch slots; with 16-token prompts and 8-token answers one replica saturates at
some tens of requests/s on two shared CPU cores: below that the TTFT p90 stays well under the
1 s target, past it the queue grows without bound. Short requests at a high rate keep each step
to a few seconds: an attempt (two calibrations and two checks) takes about 2.5 minutes, over which
the machine's other load should change little; a second attempt runs only if the first fails. Two calibrations with different Poisson draws must agree
within 15%; serving the suggested target must meet the TTFT p90, and 1.5x the target must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import pytest

from tests.server.serverkit import SERVED_NAME, start_server
from tokenscale.calibrate.client import Endpoint, LoadClient
from tokenscale.calibrate.plan import LengthMix, StepConfig, poisson_step
from tokenscale.calibrate.search import PASS, SearchConfig, Slo, late_budget, step_point, verdict
from tokenscale.cli import main
from tokenscale.sim.profiles import get_profile

# A timing measurement (two calibrations within 15% of each other): on a shared 2-core machine they
# swung 2-3x apart, so it runs in `make test-timing` on a quiet machine, not in `make test`.
pytestmark = [pytest.mark.slow, pytest.mark.timing, pytest.mark.timeout(900)]

INPUT, OUTPUT = 16, 8
SLO = Slo(ttft_s=1.0, percentile=90)
SWEEP = ["--input-tokens", str(INPUT), "--output-tokens", str(OUTPUT), "--ttft", "1s", "--percentile", "90",
         "--step-seconds", "5", "--min-requests", "60", "--plain"]
CHECK_REQUESTS = 150  # per check: the p90 is then the 135th of 150 TTFTs


def _serve_at(url: str, rate: float, seed: int) -> tuple:
    """One open-loop step at `rate` with the calibration's own client; returns (point, verdict)."""
    lengths = LengthMix.fixed(INPUT, OUTPUT)
    step = StepConfig(seconds=CHECK_REQUESTS / rate, min_requests=CHECK_REQUESTS, seed=seed)

    async def go():
        async with LoadClient(Endpoint(url=f"{url}/v1", model=SERVED_NAME), seed=seed) as client:
            await client.prepare()
            plan = poisson_step(rate, lengths, step, index=0)
            budget = (SLO.ttft_s, late_budget(len(plan), SLO.percentile))  # stop once it has certainly failed
            samples, gauges = await client.run_step(plan, drain_s=60, ttft_budget=budget)
            await client.wait_idle()
            return step_point(rate, samples, SLO, gauges)

    point = asyncio.run(go())
    return point, verdict(point, SLO, SearchConfig())


def _calibrate_and_check(url: str, directory: Path) -> None:
    directory.mkdir()
    endpoint = ["calibrate", "--endpoint", f"{url}/v1", "--model", SERVED_NAME, *SWEEP]
    runs = []
    for seed in (1, 2):
        out = directory / f"run{seed}.json"
        extra = ["--out", str(directory / "profile.yaml"), "--plot", str(directory / "curve.png")] if seed == 1 else []
        assert main([*endpoint, "--seed", str(seed), "--json", str(out), *extra]) == 0
        runs.append(json.loads(out.read_text()))

    for run in runs:  # the JSON carries every measured point, with the fields documented
        assert run["targetQueueDepthPerReplica"] >= 1
        assert len(run["points"]) >= 3
        for point in run["points"]:
            assert {"rate", "tokensPerSecond", "ttftSeconds", "itlSeconds", "errors"} <= set(point)
        assert any(p["verdict"] != PASS for p in run["points"])  # it found where the SLO breaks
        assert sum(1 for p in run["points"] if p["chosen"]) == 1

    # the fitted profile loads into the simulator and saturates near what was measured
    profile = get_profile(str(directory / "profile.yaml"))
    assert 1 <= profile.max_batch <= 8  # the largest running batch the server reported
    modelled = profile.capacity_tokens_per_s(INPUT, OUTPUT)
    assert 0.5 * runs[0]["maxTokensPerSecond"] <= modelled <= 2.0 * runs[0]["maxTokensPerSecond"]
    assert (directory / "curve.png").stat().st_size > 10_000

    first, second = (r["targetTokensPerSecondPerReplica"] for r in runs)
    assert abs(first - second) <= 0.15 * (first + second) / 2, f"unstable: {first} vs {second} tokens/s"

    # serving at the suggested target meets the TTFT p90; 1.5x the target does not
    target = second  # the latest suggestion
    at_target, outcome = _serve_at(url, target / OUTPUT, seed=11)
    assert outcome == PASS, f"at the target {target}: {outcome}, TTFT p90 {at_target.ttft_s:.3f} s"
    over, outcome = _serve_at(url, 1.5 * target / OUTPUT, seed=12)
    assert outcome != PASS, f"1.5x the target {target} passed: TTFT p90 {over.ttft_s:.3f} s"


@contextlib.contextmanager
def _priority(niceness: int):
    """Run at a raised CPU priority where allowed (root), and restore it after."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except PermissionError:
        yield
        return
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)


def test_calibrate_is_stable_and_its_target_holds_the_slo(tiny_model: Path, tmp_path: Path, capsys) -> None:
    """The machine is shared (two cores, other jobs): the server's share of the CPU, and with it
    its capacity, can swing twofold within minutes. The server and this client run at a raised
    priority where the test may set one (the server inherits it), and an attempt that fails is
    repeated once, from scratch; both attempts' failures are reported if the second fails too."""
    with _priority(-10):
        server = start_server(tiny_model, tmp_path, "--max-batch", "8", "--max-model-len", "256", timeout=120)
    failures = []
    try:
        with _priority(-10):
            for attempt in (1, 2):
                try:
                    _calibrate_and_check(server.url, tmp_path / f"attempt{attempt}")
                except AssertionError as error:
                    failures.append(f"attempt {attempt}: {error}")
                    continue
                break
    finally:
        server.stop()
    if len(failures) == 2:
        pytest.fail("\n".join(failures))
    printed = capsys.readouterr().out
    assert "targetTokensPerSecondPerReplica:" in printed and "targetQueueDepthPerReplica:" in printed
