"""The calibration search on synthetic latency curves: the coarse sweep, the bisection, the stop on
saturation and errors, the knee, the suggested targets, and `step_point` on hand-made requests."""

from __future__ import annotations

import math

import pytest

from tokenscale.calibrate.search import (
    ERRORS,
    ITL,
    PASS,
    SATURATED,
    TTFT,
    GaugeSample,
    Point,
    RequestSample,
    Search,
    SearchConfig,
    Slo,
    knee,
    percentile,
    step_point,
    suggest,
)

OUTPUT = 100  # tokens per request in the synthetic replicas


def replica(capacity: float, *, base: float = 0.05, scale: float = 0.05, step_s: float = 60.0,
            itl: float = 0.02, errors_above: float = math.inf):
    """A synthetic replica of `capacity` requests/s: TTFT at the percentile grows like a queue's
    wait (base + scale * rho / (1 - rho)); past capacity the backlog grows for the whole step,
    so completions lag arrivals and the TTFT is the wait the step built up."""

    def measure(rate: float) -> Point:
        rho = rate / capacity
        if rho < 1:
            ttft = base + scale * rho / (1 - rho)
            completion = rate
        else:
            ttft = base + step_s * (1 - 1 / rho)
            completion = capacity
        errors = 5 if rate > errors_above else 0
        return Point(rate=rate, requests=200, errors=errors, tokens_per_second=completion * OUTPUT, ttft_s=ttft,
                     itl_s=itl * (1 + rho), ttft_p50_s=ttft / 3, arrival_rate=rate, completion_rate=completion,
                     concurrency=rate * (ttft + OUTPUT * itl), waiting=rate * ttft / 2, output_tokens=OUTPUT,
                     input_tokens=50, itl_mean_s=itl * (1 + rho), decoding=rate * OUTPUT * itl * (1 + rho),
                     running=rate * OUTPUT * itl * (1 + rho), max_running=min(64.0, 2 * rate))

    return measure


def run(search: Search, measure) -> list[float]:
    rates = []
    while (rate := search.next_rate()) is not None:
        rates.append(rate)
        search.record(measure(rate))
    return rates


def boundary(capacity: float, target: float, base: float = 0.05, scale: float = 0.05) -> float:
    """The rate at which the synthetic TTFT equals the target."""
    x = (target - base) / scale  # rho / (1 - rho)
    return capacity * x / (1 + x)


def test_the_sweep_doubles_then_bisects_to_the_resolution() -> None:
    slo = Slo(ttft_s=0.5)
    search = Search(slo, SearchConfig(start_rate=1.0, resolution=0.05))
    rates = run(search, replica(20.0))
    assert rates[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]  # 32 fails: the coarse sweep ends there
    assert search.phases[:6] == ["sweep"] * 6 and search.phases[6] == "bisect"
    assert rates[5] == 32.0 and search.verdicts[5] != PASS
    assert all(16.0 < r < 32.0 for r in rates[6:])  # bisection inside the bracket
    best, fail = search.best_pass(), search.lowest_fail()
    assert rates[-1] == best.rate and rates.count(best.rate) == 2 and search.phases[-1] == "confirm"
    truth = boundary(20.0, 0.5)
    assert best.rate <= truth < fail.rate
    assert fail.rate <= best.rate * 1.05
    assert "bracketed" in search.stop_reason


def test_a_saturated_step_fails_even_when_its_ttft_looks_fine() -> None:
    # A lenient target: a short overloaded step never builds a wait of 30 s, so TTFT alone would
    # pass rates far above capacity. The completions lagging the arrivals stop the sweep.
    slo = Slo(ttft_s=30.0)
    measure = replica(10.0, step_s=20.0)
    search = Search(slo, SearchConfig(start_rate=1.0))
    run(search, measure)
    saturated = [p.rate for p, v in zip(search.points, search.verdicts, strict=True) if v == SATURATED]
    assert saturated and max(p.rate for p in search.points) == 16.0  # no step above the first saturated one
    assert search.best_pass().rate <= 10.0 / 0.85
    assert TTFT not in search.verdicts  # it was never the TTFT that failed


def test_without_saturation_detection_the_same_replica_would_be_overrated() -> None:
    # the control for the test above: the TTFT alone passes an overloaded step
    point = replica(10.0, step_s=20.0)(16.0)
    assert point.ttft_s < 30.0 and point.backlog_ratio < 0.85


def test_errors_fail_a_step_and_stop_the_sweep() -> None:
    search = Search(Slo(ttft_s=5.0), SearchConfig(start_rate=1.0))
    run(search, replica(100.0, errors_above=6.0))
    assert search.verdicts[:3] == [PASS, PASS, PASS]
    assert search.verdicts[3] == ERRORS and search.points[3].rate == 8.0
    assert 4.0 <= search.best_pass().rate < 6.0 * 1.1


def test_the_itl_target_binds_when_it_is_the_tighter_one() -> None:
    measure = replica(20.0)  # ITL = 0.02 * (1 + rho)
    ttft_only = Search(Slo(ttft_s=2.0), SearchConfig(resolution=0.05))
    run(ttft_only, measure)
    both = Search(Slo(ttft_s=2.0, itl_s=0.03), SearchConfig(resolution=0.05))
    run(both, measure)
    assert ITL in both.verdicts
    assert both.best_pass().rate < ttft_only.best_pass().rate
    assert both.best_pass().rate <= 10.0 < both.lowest_fail().rate  # ITL 0.03 at rho = 0.5


def test_a_first_step_that_fails_walks_down() -> None:
    search = Search(Slo(ttft_s=0.5), SearchConfig(start_rate=64.0, resolution=0.1))
    rates = run(search, replica(20.0))
    assert rates[:3] == [64.0, 32.0, 16.0]
    assert search.best_pass().rate <= boundary(20.0, 0.5) < search.lowest_fail().rate


def test_nothing_meets_an_impossible_slo() -> None:
    search = Search(Slo(ttft_s=0.01), SearchConfig(start_rate=1.0, min_rate=0.1))
    run(search, replica(20.0))
    assert search.best_pass() is None
    assert "no rate" in search.stop_reason
    result = suggest(search)
    assert result.chosen is None and result.target_tokens_per_second is None


def test_the_step_limit_and_the_rate_ceiling_stop_the_search() -> None:
    limited = Search(Slo(ttft_s=0.5), SearchConfig(max_steps=3))
    assert len(run(limited, replica(1000.0))) == 3 and "step limit" in limited.stop_reason
    capped = Search(Slo(ttft_s=0.5), SearchConfig(max_rate=5.0))
    assert run(capped, replica(1000.0)) == [1.0, 2.0, 4.0, 5.0, 5.0]  # the last one confirms
    assert "max-rate" in capped.stop_reason


def test_a_failed_confirmation_reopens_the_bracket_below() -> None:
    # the replica's true boundary is 18 req/s; it passes 20 once by luck, then fails it when confirmed
    measure = replica(20.0)
    seen = []

    def noisy(rate: float) -> Point:
        point = measure(rate)
        if rate == 20.0:
            seen.append(rate)
            return Point(**{**point.__dict__, "ttft_s": 0.1 if len(seen) == 1 else 9.0})
        return point

    search = Search(Slo(ttft_s=0.5), SearchConfig(start_rate=10.0, resolution=0.1))
    rates = run(search, noisy)
    assert rates[:3] == [10.0, 20.0, 40.0]
    assert len(seen) == 2  # measured, then confirmed, and the confirmation failed
    assert search.best_pass().rate <= boundary(20.0, 0.5) < search.lowest_fail().rate <= 20.0
    assert rates[-1] == search.best_pass().rate and rates.count(rates[-1]) == 2  # the new best, confirmed


def test_a_lucky_pass_above_a_failure_is_not_chosen() -> None:
    search = Search(Slo(ttft_s=0.5))
    good = replica(20.0)
    search.record(good(4.0))
    search.record(good(30.0))  # fails
    lucky = good(12.0)
    search.record(Point(**{**lucky.__dict__, "rate": 40.0}))  # noise: a pass above the failure
    assert search.best_pass().rate == 4.0 and search.lowest_fail().rate == 30.0


def test_the_suggestion_takes_tokens_and_the_queue_at_the_chosen_point() -> None:
    search = Search(Slo(ttft_s=0.5), SearchConfig(resolution=0.05))
    run(search, replica(20.0))
    result = suggest(search)
    assert result.chosen is search.best_pass()
    # the rate times the tokens per request (here equal to the windowed measurement)
    assert result.target_tokens_per_second == pytest.approx(result.chosen.rate * OUTPUT, rel=0.005)
    assert result.target_tokens_per_second == pytest.approx(result.chosen.tokens_per_second, rel=0.005)
    assert result.target_queue_depth == math.ceil(result.chosen.waiting)
    assert result.capacity_tokens_per_second == pytest.approx(20.0 * OUTPUT)


def test_the_queue_target_is_at_least_one() -> None:
    search = Search(Slo(ttft_s=0.5))
    point = replica(20.0)(1.0)
    search.record(Point(**{**point.__dict__, "waiting": 0.0}))
    assert suggest(search).target_queue_depth == 1.0


def test_the_knee_is_where_latency_turns_up() -> None:
    measure = replica(20.0)
    curve = [measure(r) for r in (2, 4, 8, 12, 16, 18, 19, 19.5)]
    found = knee(curve)
    assert found is not None and 12 <= found.rate <= 18
    assert knee(curve[:2]) is None
    flat = [Point(**{**p.__dict__, "ttft_s": 0.1}) for p in curve]
    assert knee(flat) is None


# --- step_point --------------------------------------------------------------------------------


def _request(at: float, ttft: float, tokens: int, itl: float, ok: bool = True) -> RequestSample:
    first = at + ttft
    last = first + (tokens - 1) * itl
    return RequestSample(scheduled_at=at, input_tokens=32, ok=ok, first_token_at=first if ok else None,
                         last_token_at=last if ok else None, finished_at=last + 0.001 if ok else at + 0.1,
                         output_tokens=tokens if ok else 0)


def test_summarize_a_steady_step() -> None:
    # 10 requests/s for 20 s, each 0.1 s to its first token then 20 tokens at 10 ms
    samples = [_request(i * 0.1, 0.1, 20, 0.01) for i in range(200)]
    point = step_point(10.0, samples, Slo(ttft_s=1.0, percentile=99))
    assert point.errors == 0 and point.requests == 200
    assert point.tokens_per_second == pytest.approx(200.0, rel=0.03)
    assert point.ttft_s == pytest.approx(0.1) and point.itl_s == pytest.approx(0.01)
    assert point.backlog_ratio == pytest.approx(1.0, abs=0.03)
    assert point.concurrency == pytest.approx(10 * 0.291, rel=0.05)  # Little: rate x time in system
    assert point.waiting == 1.0 and point.queue_source == "client"  # 1 awaiting its first token, 90% of the time
    assert point.output_tokens == 20


def test_failed_requests_are_errors_never_throughput() -> None:
    good = [_request(i * 0.1, 0.1, 20, 0.01) for i in range(200)]
    failed = [_request(i * 0.1 + 0.05, 0.1, 20, 0.01, ok=False) for i in range(0, 200, 20)]
    point = step_point(10.5, good + failed, Slo(ttft_s=1.0, percentile=99))
    assert point.errors == 10
    assert point.tokens_per_second == pytest.approx(200.0, rel=0.03)  # the failed ones add nothing
    assert math.isinf(point.ttft_s)  # 10 of 210 failed: the p99 is a failure
    assert verdict_of(point) == ERRORS
    assert step_point(10.5, good + failed, Slo(ttft_s=1.0, percentile=90)).ttft_s == pytest.approx(0.1)


def test_a_backlog_shows_as_completions_lagging_arrivals() -> None:
    # 10 requests/s arrive, the replica finishes 5/s: each waits 0.1 s longer than the last
    samples = []
    for i in range(200):
        at = i * 0.1
        done_by = 0.2 * (i + 1)
        samples.append(RequestSample(at, 32, True, first_token_at=done_by - 0.1, last_token_at=done_by,
                                     finished_at=done_by, output_tokens=10))
    point = step_point(10.0, samples, Slo(ttft_s=100.0))
    assert point.backlog_ratio == pytest.approx(0.5, abs=0.05)
    assert verdict_of(point, ttft=100.0) == SATURATED


def test_server_gauges_replace_the_client_side_queue() -> None:
    samples = [_request(i * 0.1, 0.1, 20, 0.01) for i in range(100)]
    gauges = [GaugeSample(at=t * 0.5, waiting=float(t % 4), running=8.0, kv_usage=0.5) for t in range(20)]
    point = step_point(10.0, samples, Slo(ttft_s=1.0), gauges)
    assert point.queue_source == "server"
    assert point.waiting == 3.0 and point.running == 8.0 and point.kv_usage == 0.5


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 99) == 99 and percentile(values, 50) == 50 and percentile(values, 100) == 100
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_slo_rejects_nonsense() -> None:
    for bad in ({"ttft_s": 0}, {"ttft_s": 1, "itl_s": -1}, {"ttft_s": 1, "percentile": 100}):
        with pytest.raises(ValueError):
            Slo(**bad)


def verdict_of(point: Point, ttft: float = 1.0) -> str:
    from tokenscale.calibrate.search import verdict

    return verdict(point, Slo(ttft_s=ttft), SearchConfig())
