"""The profile calibrate writes: fitted from synthetic points of a known replica, written as YAML,
validated on load with clear errors, and replayed by `tokenscale simulate --profile FILE`."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from tokenscale.calibrate.fit import FitOptions, calibration_record, fit_profile
from tokenscale.calibrate.plan import LengthMix, StepConfig, poisson_step
from tokenscale.calibrate.search import Point, Search, SearchConfig, Slo, suggest
from tokenscale.cli import main
from tokenscale.commands.calibrate import duration
from tokenscale.sim.profiles import (
    CPU_TINY,
    ProfileError,
    ReplicaProfile,
    dump_profile,
    get_profile,
    load_profile,
    profile_from_dict,
)

INPUT, OUTPUT = 200, 100
TRUE = ReplicaProfile(name="true", description="", decode_base_s=0.010, decode_per_sequence_s=0.0005,
                      decode_per_kv_token_s=0.0, prefill_tokens_per_s=4000.0, max_batch=16,
                      kv_capacity_tokens=16 * 1024, startup_s=60.0, startup_spread_s=0.0)


def _measured(rate: float) -> Point:
    """What a calibration step would see of TRUE at `rate`: the batch by Little's law, the ITL
    as its step time, saturation past its capacity."""
    capacity = TRUE.capacity_requests_per_s(INPUT, OUTPUT)
    served = min(rate, capacity)
    batch = TRUE.max_batch if rate >= capacity else 0.0
    if not batch:  # solve batch = served x (OUTPUT x step(batch)) for the running batch
        for _ in range(50):
            batch = served * OUTPUT * TRUE.step_seconds(batch, 0)
    batch = min(batch, TRUE.max_batch)
    step = TRUE.step_seconds(batch, 0)
    saturated = rate >= capacity
    ttft = INPUT / TRUE.prefill_tokens_per_s + (5.0 if saturated else 0.01 * rate / capacity)
    return Point(rate=rate, requests=200, errors=0, tokens_per_second=served * OUTPUT, ttft_s=ttft, itl_s=step * 1.2,
                 ttft_p50_s=INPUT / TRUE.prefill_tokens_per_s, arrival_rate=rate, completion_rate=served,
                 concurrency=batch, waiting=4.0 if saturated else 0.0, running=batch, max_running=batch,
                 kv_usage=batch * (INPUT + OUTPUT / 2) / TRUE.kv_capacity_tokens, input_tokens=INPUT,
                 output_tokens=OUTPUT, queue_source="server", itl_mean_s=step, decoding=batch)


def _search() -> Search:
    search = Search(Slo(ttft_s=1.0), SearchConfig(start_rate=2.0, resolution=0.05))
    while (rate := search.next_rate()) is not None:
        search.record(_measured(rate))
    return search


def test_the_fit_recovers_a_known_replica() -> None:
    search = _search()
    suggestion = suggest(search)
    profile = fit_profile(search, suggestion, FitOptions(name="fitted", startup_s=45.0))
    assert profile.max_batch == TRUE.max_batch
    assert profile.decode_base_s == pytest.approx(TRUE.decode_base_s, rel=0.1)
    assert profile.decode_per_sequence_s == pytest.approx(TRUE.decode_per_sequence_s, rel=0.25)
    assert profile.prefill_tokens_per_s == pytest.approx(TRUE.prefill_tokens_per_s, rel=0.01)
    # the part that matters to the simulator: it saturates where the real replica did
    assert profile.capacity_tokens_per_s(INPUT, OUTPUT) == pytest.approx(
        TRUE.capacity_tokens_per_s(INPUT, OUTPUT), rel=0.05)
    assert profile.kv_capacity_tokens >= profile.max_batch * (INPUT + OUTPUT)
    assert profile.startup_s == 45.0 and profile.ttft_target_s == 1.0


def test_given_limits_win_over_estimates() -> None:
    search = _search()
    profile = fit_profile(search, suggest(search), FitOptions(name="x", max_batch=64, kv_capacity_tokens=123_456))
    assert profile.max_batch == 64 and profile.kv_capacity_tokens == 123_456
    assert profile.startup_s == 90.0  # not measured: the file default


def test_the_profile_round_trips_through_yaml_and_simulate_uses_it(tmp_path) -> None:
    search = _search()
    suggestion = suggest(search)
    profile = fit_profile(search, suggestion, FitOptions(name="mine", startup_s=30.0))
    path = tmp_path / "mine.yaml"
    path.write_text(dump_profile(profile, calibration_record(search, suggestion)))
    document = yaml.safe_load(path.read_text())
    assert document["kind"] == "ReplicaProfile" and document["calibration"]["targetTokensPerSecondPerReplica"]
    loaded = get_profile(str(path))
    assert loaded.max_batch == profile.max_batch
    assert loaded.capacity_tokens_per_s(INPUT, OUTPUT) == pytest.approx(profile.capacity_tokens_per_s(INPUT, OUTPUT),
                                                                       rel=1e-3)
    out = tmp_path / "sim.json"
    assert main(["simulate", "--generate", "poisson", "--rate", "3", "--duration", "300", "--profile", str(path),
                 "--policy", "static=2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["profile"] == "mine" and result["results"][0]["policy"] == "static"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"maxBatch": 0}, "maxBatch must be positive"),
        ({"maxBatch": 2.5}, "maxBatch must be a whole number"),
        ({"prefillTokensPerSecond": "fast"}, "prefillTokensPerSecond must be a number"),
        ({"decodeBase": 0.01}, "unknown field(s) decodeBase"),
        ({"kind": "InferenceService"}, "kind must be ReplicaProfile"),
        ({"decodeBaseSeconds": None}, "missing required field(s) decodeBaseSeconds"),
        ({"startupSeconds": 10, "startupSpreadSeconds": 20}, "startupSpreadSeconds (20) exceeds"),
    ],
)
def test_a_bad_profile_gets_an_error_naming_the_field(change, message) -> None:
    document = yaml.safe_load(dump_profile(CPU_TINY))
    document.update(change)
    with pytest.raises(ProfileError, match=r"^here\.yaml: ") as raised:
        profile_from_dict(document, source="here.yaml")
    assert message in str(raised.value)


def test_simulate_reports_a_bad_profile_file_and_exits_2(tmp_path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: ReplicaProfile\nname: bad\n")
    assert main(["simulate", "--generate", "poisson", "--duration", "60", "--profile", str(path)]) == 2
    assert "missing required field(s)" in capsys.readouterr().err
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("kind: [\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(tmp_path / "broken.yaml")


def test_a_built_in_profile_written_out_loads_back_the_same() -> None:
    assert profile_from_dict(yaml.safe_load(dump_profile(CPU_TINY))) == CPU_TINY


# --- small parts of the command -----------------------------------------------------------------


def test_durations() -> None:
    assert duration("2s") == 2.0 and duration("250ms") == 0.25 and duration("1.5") == 1.5
    for bad in ("fast", "-1s", "0", "2 h"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(bad)


def test_poisson_steps_are_seeded_open_loop_plans() -> None:
    lengths = LengthMix.from_rows([10, 20, 30], [5, 6, 7])
    config = StepConfig(seconds=50, min_requests=20, seed=3)
    plan = poisson_step(4.0, lengths, config, index=2)
    assert plan == poisson_step(4.0, lengths, config, index=2)
    assert plan != poisson_step(4.0, lengths, config, index=3)
    assert len(plan) == 200 and plan[0].at == 0.0
    assert all(b.at >= a.at for a, b in zip(plan, plan[1:], strict=False))
    assert 150 / 4.0 < plan[-1].at < 250 / 4.0  # about 50 s of arrivals at 4/s
    assert {(r.input_tokens, r.output_tokens) for r in plan} == set(lengths.pairs)
    assert len(poisson_step(0.1, lengths, config, index=0)) == 20  # the floor
    assert len(poisson_step(4.0, lengths, config, index=0, confirm=True)) == 400


def test_calibrate_rejects_a_missing_output_length(capsys) -> None:
    args = ["calibrate", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--input-tokens", "10", "--ttft", "1s"]
    assert main(args) == 2
    assert "--output-tokens" in capsys.readouterr().err


def test_calibrate_says_when_the_endpoint_is_unreachable(capsys) -> None:
    args = ["calibrate", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--input-tokens", "10",
            "--output-tokens", "5", "--ttft", "1s", "--plain"]
    assert main(args) == 2
    assert "cannot reach http://127.0.0.1:9/v1/completions" in capsys.readouterr().err


def test_the_queue_gauges_are_read_under_each_engines_names() -> None:
    from tokenscale.calibrate.client import Endpoint, parse_gauges

    vllm = ('# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="a"} 3.0\n'
            'vllm:num_requests_waiting{model_name="b"} 1.0\nvllm:num_requests_running{model_name="a"} 8.0\n'
            'vllm:kv_cache_usage_perc{model_name="a"} 0.25\nvllm:num_requests_waiting_total 99\n')
    assert parse_gauges(vllm) == {"waiting": 4.0, "running": 8.0, "kv_usage": 0.25}
    assert parse_gauges("sglang_num_queue_reqs 2\nsglang_num_running_reqs 5\n") == {"waiting": 2.0, "running": 5.0}
    assert parse_gauges("tgi_queue_size 1\ntgi_batch_current_size 7\n") == {"waiting": 1.0, "running": 7.0}
    assert parse_gauges("other_metric 1\n") == {}
    assert Endpoint("http://h:8000/v1", "m").metrics() == "http://h:8000/metrics"
    assert Endpoint("http://h:8000/v1", "m", metrics_url="").metrics() is None


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_without_rich(monkeypatch) -> None:
    import io
    import sys

    from rich.console import Console

    from tokenscale.calibrate import progress as progress_module

    point = _measured(3.0)
    screen = io.StringIO()
    bar = progress_module.RichProgress(Console(file=screen, force_terminal=True, width=100))
    bar.start_step(0, 3.0, "sweep", 10)
    bar.advance(5)
    bar.end_step(point, "pass")
    bar.close()
    assert "3 req/s" in screen.getvalue() and "meets the SLO" in screen.getvalue()

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    on_terminal = progress_module.make_progress()
    on_terminal.close()
    assert isinstance(on_terminal, progress_module.RichProgress)
    monkeypatch.setitem(sys.modules, "rich.console", None)  # rich not installed: plain lines
    plain = progress_module.make_progress()
    assert type(plain) is progress_module.Progress
    plain.end_step(point, "saturated")
    assert "fails (saturated)" in sys.stderr.getvalue()


def test_when_every_failure_was_cut_short_the_profile_still_delivers_what_was_seen() -> None:
    def cut_or_measured(rate: float) -> Point:
        point = _measured(rate)
        if point.completion_rate < rate:  # the step would have saturated: it is cut short instead
            return Point(**{**point.__dict__, "cut_short": True, "tokens_per_second": 5.0,
                            "completion_rate": rate, "running": 3.0, "max_running": 3.0})
        return point

    search = Search(Slo(ttft_s=1.0), SearchConfig(start_rate=2.0, resolution=0.05))
    while (rate := search.next_rate()) is not None:
        search.record(cut_or_measured(rate))
    assert "saturated" not in search.verdicts and any(p.cut_short for p in search.points)
    # a slow ITL line (as on a descheduled CPU) would underrate the replica; what it delivered wins
    slow = [Point(**{**p.__dict__, "itl_mean_s": 3 * p.itl_mean_s}) if p.itl_mean_s else p for p in search.points]
    search.points[:] = slow
    profile = fit_profile(search, suggest(search), FitOptions(name="x"))
    delivered = max(p.tokens_per_second for p in search.points if not p.cut_short)
    assert profile.capacity_tokens_per_s(INPUT, OUTPUT) >= delivered * 0.999


def test_a_trace_gives_the_length_mix(tmp_path) -> None:
    from tokenscale.commands.calibrate import _lengths

    trace = tmp_path / "requests.csv"
    trace.write_text("timestamp_s,input_tokens,output_tokens\n0.0,100,10\n5.5,300,30\n9.0,200,20\n")
    mix = _lengths(argparse.Namespace(trace=str(trace), input_tokens=None, output_tokens=None))
    assert sorted(mix.pairs) == [(100, 10), (200, 20), (300, 30)]
    assert mix.mean_input == 200 and mix.mean_output == 20


def test_http_time_in_the_ttft_does_not_throttle_the_profile() -> None:
    # a low-load TTFT of 0.5 s (mostly HTTP and tokenizer time) read as prefill would leave a
    # 200-token request no time to decode at the measured throughput: the prefill rate is scaled too
    search = _search()
    search.points[:] = [Point(**{**p.__dict__, "ttft_p50_s": 0.5}) for p in search.points]
    profile = fit_profile(search, suggest(search), FitOptions(name="x"))
    assert profile.prefill_tokens_per_s > INPUT / 0.5
    assert profile.capacity_tokens_per_s(INPUT, OUTPUT) == pytest.approx(
        TRUE.capacity_tokens_per_s(INPUT, OUTPUT), rel=0.05)
