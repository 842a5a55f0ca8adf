"""The capacity learner (policy/capacity.py): what each observation teaches, the bounds, confidence,
the rate bound, missing data, the round trip through status, and convergence on synthetic replicas
with a known capacity (hypothesis)."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tokenscale.api.crd import crd
from tokenscale.api.models import AutoscalerState, AutoscalingSpec
from tokenscale.policy import History, ReplicaState, Signals, decide, history_from_status, history_to_status
from tokenscale.policy import capacity as learner
from tokenscale.policy.capacity import MIN_SAMPLES, CapacityState

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TTFT_TARGET = 2.0


def learned_spec(start: float = 1000.0, **overrides) -> AutoscalingSpec:
    values = {
        "min_replicas": 1,
        "max_replicas": 200,
        "target_tokens_per_second_per_replica": start,
        "slo": {"ttftSeconds": TTFT_TARGET, "percentile": 99},
        "capacity": {"source": "Learned"},
    }
    values.update(overrides)
    return AutoscalingSpec.model_validate(values)


def sig(per_replica: float, ready: int, *, ttft: float | None, queue: float = 0.0, kv: float | None = 0.5,
        **more) -> Signals:
    values = dict(tokens_per_second=per_replica * ready, tokens_per_second_long=per_replica * ready,
                  queue_depth=queue, running_requests=20.0 * ready, kv_cache_usage=kv, ttft_p90_seconds=ttft,
                  ttft_p99_seconds=ttft, sample_age_seconds=5.0, ready_pods_reporting=ready)
    values.update(more)
    return Signals(**values)


def observe(state, signals, spec, *, ready=4, now=1000.0, growth=0.0, held=True):
    """One observation; `held`: the same signals a rate window (60 s) earlier too, so its kind has held."""
    if held:
        state = learner.observe(state, signals, spec, ready=ready, settle_seconds=60, queue_growth=growth,
                                now=now - 60)
    return learner.observe(state, signals, spec, ready=ready, settle_seconds=60, queue_growth=growth, now=now)


# --- what one observation teaches ----------------------------------------------------------------

CLASSIFY = [
    # (why, signals at 4 ready replicas, queue growth, expected kind)
    ("TTFT over the target while requests wait: an upper bound", sig(900, 4, ttft=2.5, queue=3), 0.0, "upper"),
    ("TTFT over the target with the KV cache nearly full", sig(900, 4, ttft=2.5, kv=0.95), 0.0, "upper"),
    ("a queue above its target that still grows", sig(900, 4, ttft=0.3, queue=40), 1.0, "upper"),
    ("TTFT under half the target, no queue: a lower bound", sig(900, 4, ttft=0.5), 0.0, "lower"),
    ("slow prompts alone (no queue, KV free) are not overload", sig(900, 4, ttft=2.5), 0.0, None),
    ("between comfortable and the SLO: nothing", sig(900, 4, ttft=1.5), 0.0, None),
    ("a queue that drains is not overload, nor comfortable", sig(900, 4, ttft=0.3, queue=40), -1.0, None),
    ("TTFT missing: nothing", sig(900, 4, ttft=None, queue=40), 1.0, None),
    ("TTFT NaN: nothing", sig(900, 4, ttft=math.nan, queue=40), 1.0, None),
    ("KV NaN: nothing", sig(900, 4, ttft=0.5, kv=math.nan), 0.0, None),
    ("a pod not reporting: nothing", sig(900, 4, ttft=0.5, ready_pods_reporting=3), 0.0, None),
    ("tokens/s NaN: nothing", sig(900, 4, ttft=0.5, tokens_per_second=math.nan), 0.0, None),
    ("an engine without KV metrics still teaches", sig(900, 4, ttft=0.5, kv=None), 0.0, "lower"),
]


@pytest.mark.parametrize("why,signals,growth,kind", CLASSIFY, ids=[row[0] for row in CLASSIFY])
def test_observation_kinds(why, signals, growth, kind):
    state = observe(None, signals, learned_spec(), growth=growth)
    if kind is None:
        assert (state.samples, state.lower, state.upper) == (0, None, None), why
    elif kind == "upper":
        assert (state.samples, state.upper, state.lower) == (1, 900.0, None), why
    else:
        assert (state.samples, state.lower, state.upper) == (1, 900.0, None), why


def test_itl_slo_bounds_from_above():
    spec = learned_spec(slo={"ttftSeconds": 2, "itlSeconds": 0.05})
    # 4 replicas, 80 running, 900 tok/s each: a step gives each of the 20 sequences a token every 22 ms
    assert observe(None, sig(900, 4, ttft=0.5), spec).lower == 900.0
    slow = sig(900, 4, ttft=0.5, running_requests=200.0)  # 56 ms between tokens
    assert observe(None, slow, spec).upper == 900.0


def test_the_slo_percentile_picks_the_quantile():
    signals = Signals(ttft_p90_seconds=1.0, ttft_p99_seconds=3.0)
    assert learner.ttft_at_percentile(signals, 90) == 1.0
    assert learner.ttft_at_percentile(signals, 50) == 1.0  # judged on p90: conservative
    assert learner.ttft_at_percentile(signals, 95) == 3.0
    assert learner.ttft_at_percentile(signals, 99.9) == 3.0


def test_light_load_teaches_nothing():
    """Comfort at a tenth of the believed capacity is consistent with any capacity: no sample."""
    state = observe(None, sig(90, 4, ttft=0.1), learned_spec(start=1000))
    assert state.samples == 0 and state.lower is None


def test_after_the_ready_count_falls_rates_settle_first():
    """The short rate window still holds the output of pods that left: per-replica rates read high."""
    spec = learned_spec()
    state = observe(None, sig(900, 4, ttft=0.5), spec, ready=4, now=1000)
    assert state.lower == 900.0
    state = observe(state, sig(1200, 3, ttft=0.5), spec, ready=3, now=1015, held=False)
    assert state.lower == 900.0 and state.ready_fell_at == 1015
    state = observe(state, sig(1200, 3, ttft=0.5), spec, ready=3, now=1080, held=False)
    assert state.lower == pytest.approx(1200.0)


def test_an_observation_counts_once_its_kind_held_a_rate_window():
    """A burst's first minute reads the calm before it at 1-minute rates: overload counts after half a
    window of it, comfort after a whole one."""
    spec = learned_spec()
    state = observe(None, sig(600, 4, ttft=2.5, queue=8), spec, now=1000, held=False)
    assert state.samples == 0 and state.regime == "upper"
    state = observe(state, sig(900, 4, ttft=2.5, queue=8), spec, now=1030, held=False)
    assert (state.samples, state.upper) == (1, 900.0)
    state = observe(state, sig(700, 4, ttft=0.3), spec, now=1045, held=False)
    state = observe(state, sig(700, 4, ttft=0.3), spec, now=1090, held=False)
    assert state.lower is None and state.regime == "lower"
    state = observe(state, sig(700, 4, ttft=0.3), spec, now=1105, held=False)
    assert state.lower == 700.0


def test_aim_brackets_the_evidence():
    now = 0.0
    assert learner.aim(CapacityState(), now, 700.0) is None
    only_lower = CapacityState(lower=1000.0, lower_time=now)
    assert learner.aim(only_lower, now, 700.0) == pytest.approx(1000 * (1 + learner.PROBE))  # probe up
    assert learner.aim(only_lower, now, 2000.0) == 2000.0  # nothing says it is lower
    only_upper = CapacityState(upper=1000.0, upper_time=now)
    assert learner.aim(only_upper, now, 2000.0) == pytest.approx(1000 * learner.UPPER_MARGIN)
    assert learner.aim(only_upper, now, 700.0) == 700.0
    both = CapacityState(lower=800.0, lower_time=now, upper=1000.0, upper_time=now)
    assert learner.aim(both, now, 700.0) == pytest.approx(1000 * learner.UPPER_MARGIN)
    inside = CapacityState(lower=700.0, lower_time=now, upper=1000.0, upper_time=now)
    assert learner.aim(inside, now, 920.0) == 920.0  # between 1.25 x 700 and 0.95 x 1000: stays
    close = CapacityState(lower=980.0, lower_time=now, upper=1000.0, upper_time=now)
    assert learner.aim(close, now, 2000.0) == pytest.approx(980.0)  # never below what was seen comfortable
    aged = CapacityState(upper=1000.0, upper_time=now - 3600)
    assert learner.aim(aged, now, 2000.0) == pytest.approx(
        1000 * learner.BOUND_RELAX_PER_HOUR * learner.UPPER_MARGIN)


def test_a_comfortable_observation_above_an_upper_bound_replaces_it():
    spec = learned_spec()
    state = observe(None, sig(900, 4, ttft=2.5, queue=3), spec, now=1000)
    state = observe(state, sig(950, 4, ttft=0.4), spec, now=1015)
    assert (state.lower, state.upper) == (950.0, None)


# --- confidence, and which capacity decisions use ---------------------------------------------------


def test_spec_until_confident_then_learned_at_a_bounded_pace():
    spec = learned_spec(start=1000)
    history = History()
    held = 4  # comfort counts once it has held a rate window (60 s at 15 s ticks)
    for tick in range(held + MIN_SAMPLES - 1):
        decision = decide(sig(900, 4, ttft=0.3), spec, ReplicaState(4, 4), history, 1000 + 15 * tick)
        history = decision.history
        assert decision.capacity_source == "spec" and decision.capacity_per_replica == 1000
    assert "learned capacity is confident" in decision.reason
    decision = decide(sig(900, 4, ttft=0.3), spec, ReplicaState(4, 4), history, 1000 + 15 * (held + MIN_SAMPLES - 1))
    assert decision.capacity_source == "learned"
    # comfortable near the capacity in use: up from where the spec left it, by at most 8x an hour pro rata
    assert decision.capacity_per_replica == pytest.approx(1000 * 8 ** (15 / 3600))
    estimate = decision.history.capacity.estimate
    assert decision.capacity_per_replica == pytest.approx(estimate * learner.LEARNED_UTILISATION)
    assert f"learned: {estimate:,.0f} tok/s at the SLO, used at 90%" in decision.reason
    assert history_to_status(decision.history).capacity.confidence == 1.0


def test_spec_source_ignores_the_learner():
    spec = learned_spec(capacity={"source": "Spec"})
    decision = decide(sig(900, 4, ttft=0.3), spec, ReplicaState(4, 4), History(), 1000)
    assert decision.history.capacity is None and decision.capacity_source == "spec"
    assert "spec" not in decision.reason and "learned" not in decision.reason


def test_learned_needs_an_slo():
    with pytest.raises(ValidationError, match="needs slo"):
        AutoscalingSpec.model_validate({"capacity": {"source": "Learned"}})
    AutoscalingSpec.model_validate({"capacity": {"source": "Spec"}})
    AutoscalingSpec.model_validate({"slo": {"ttftSeconds": 1}})


def test_crd_rule_and_no_object_defaults():
    """The real API server checks each default literal against its node's CEL rules at CRD creation
    (docs of the project: a real kube-apiserver refused `{}` defaults that did not satisfy them). The
    new objects carry no default, and the rule holds on an empty autoscaling object."""
    autoscaling = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["autoscaling"]
    for name in ("slo", "capacity"):
        assert "default" not in autoscaling["properties"][name]
    rules = [rule["rule"] for rule in autoscaling["x-kubernetes-validations"]]
    assert any("Learned" in rule and "has(self.slo)" in rule for rule in rules)
    assert autoscaling["properties"]["slo"]["required"] == ["ttftSeconds"]


# --- missing data ---------------------------------------------------------------------------------

BROKEN = st.sampled_from([
    {"ttft_p99_seconds": None, "ttft_p90_seconds": None},
    {"ttft_p99_seconds": math.nan, "ttft_p90_seconds": math.nan},
    {"kv_cache_usage": math.nan},
    {"tokens_per_second": math.nan},
    {"tokens_per_second": None},
    {"queue_depth": None},
    {"queue_depth": math.nan},
    {"ready_pods_reporting": "one missing"},
    {"sample_age_seconds": math.nan},
])


@st.composite
def learner_states(draw) -> CapacityState:
    confident = draw(st.booleans())
    return CapacityState(
        estimate=draw(st.floats(200, 3000)) if confident else None,
        lower=draw(st.one_of(st.none(), st.floats(100, 2000))), lower_time=900.0,
        upper=draw(st.one_of(st.none(), st.floats(2000, 5000))), upper_time=900.0,
        samples=MIN_SAMPLES if confident else draw(st.integers(0, MIN_SAMPLES - 1)),
        updated_at=985.0, ready=4,
    )


@SETTINGS
@given(state=learner_states(), broken=BROKEN, load=st.floats(0, 3), ttft=st.floats(0, 5),
       queue=st.floats(0, 50), current=st.integers(1, 12))
def test_missing_data_teaches_nothing_and_decides_as_the_spec_would(state, broken, load, ttft, queue, current):
    """NaN or missing signals leave the estimate and the decision as the capacity in use would:
    the learner never raises its estimate (and so never scales down) on data it cannot read."""
    spec = learned_spec(start=1000)
    ready = min(current, 4)
    values = dataclasses.asdict(sig(load * 1000, ready, ttft=ttft, queue=queue))
    values.update(broken)
    if values["ready_pods_reporting"] == "one missing":
        values["ready_pods_reporting"] = ready - 1
    signals = Signals(**values)
    history = History(capacity=dataclasses.replace(state, ready=ready))
    decision = decide(signals, spec, ReplicaState(current, ready), history, 1000.0)
    after = decision.history.capacity
    assert (after.estimate, after.lower, after.upper, after.samples) == (
        state.estimate, state.lower, state.upper, state.samples)
    used = learner.in_use(spec, state).tokens_per_second
    as_spec = decide(signals, spec.model_copy(update={"capacity": None, "slo": None,
                                                      "target_tokens_per_second_per_replica": used}),
                     ReplicaState(current, ready), History(), 1000.0)
    assert (decision.desired, decision.limited_by) == (as_spec.desired, as_spec.limited_by)


# --- the rate bound --------------------------------------------------------------------------------


@st.composite
def ticks(draw):
    """A random run: per-replica loads, TTFTs and queues (often broken), with gaps up to an hour."""
    count = draw(st.integers(20, 80))
    rows = []
    for _ in range(count):
        rows.append((draw(st.sampled_from([15.0, 15.0, 30.0, 600.0, 3600.0])), draw(st.floats(50, 5000)),
                     draw(st.one_of(st.floats(0, 6), st.just(math.nan))), draw(st.sampled_from([0.0, 0.0, 30.0])),
                     draw(st.integers(1, 8))))
    return rows


@SETTINGS
@given(rows=ticks(), rate=st.sampled_from([1.5, 4.0, 10.0]), start=st.sampled_from([300.0, 1500.0]))
def test_the_change_per_hour_is_bounded(rows, rate, start):
    spec = learned_spec(start=start, capacity={"source": "Learned", "maxChangePerHour": rate})
    state, now = None, 0.0
    used = start
    for gap, per_replica, ttft, queue, ready in rows:
        now += gap
        state = observe(state, sig(per_replica, ready, ttft=ttft, queue=queue), spec, ready=ready, now=now,
                        growth=queue, held=False)
        after = learner.in_use(spec, state).tokens_per_second
        allowed = rate ** (min(gap, learner.MAX_STEP_SECONDS) / 3600)
        assert after <= used * allowed * (1 + 1e-9) and after >= used / allowed * (1 - 1e-9)
        used = after


# --- convergence on replicas of known capacity -------------------------------------------------------


def synthetic_run(capacity: float, start: float, *, seed: int, hours: float = 3.5, startup_ticks: int = 4):
    """decide() against replicas whose TTFT p99 meets the 2 s target exactly at `capacity` tokens/s
    (it grows as the 6th power of the load), that saturate at 1.25x it, and whose queue builds above
    0.95x it; new replicas are ready `startup_ticks` of 15 s later; demand swings between 2 and 10
    replicas' worth over an hour, with 5% noise."""
    rng = random.Random(seed)
    spec = learned_spec(start=start * capacity)
    history, now = History(), 0.0
    pods = [0, 0, 0, 0]  # ticks each pod still needs to be ready (0: ready)
    used = []
    phase = rng.uniform(0, 2 * math.pi)
    while now < hours * 3600:
        ready = max(1, sum(1 for left in pods if left == 0))
        demand = capacity * (6 + 4 * math.sin(2 * math.pi * now / 3600 + phase)) * (1 + 0.05 * rng.gauss(0, 1))
        load = demand / ready / capacity
        served = min(load, 1.25) * capacity
        ttft = TTFT_TARGET * (0.1 + 0.9 * load**6)
        queue = max(0.0, load - 0.95) * 200 * ready
        signals = sig(served, ready, ttft=ttft, queue=queue, kv=min(1.0, 0.8 * load))
        decision = decide(signals, spec, ReplicaState(len(pods), ready), history, now)
        history = decision.history
        pods = sorted(pods)[: decision.desired]  # loading pods go first, as a ReplicaSet removes them
        pods += [startup_ticks] * (decision.desired - len(pods))
        pods = [max(0, left - 1) for left in pods]
        used.append((now, decision.capacity_per_replica / capacity, decision.capacity_source))
        now += 15.0
    return used


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.floats(200, 5000), start=st.sampled_from([0.5, 2.0]), seed=st.integers(0, 10_000))
def test_converges_on_replicas_of_known_capacity(capacity, start, seed):
    """From a spec target half or twice the true capacity, the capacity decisions use stays within
    -15% / +10% of it for the whole last hour of 3.5 (decisions use 90% of the learned estimate: the
    margin under the capacity is on purpose, what arrives while a replica starts needs it)."""
    used = synthetic_run(capacity, start, seed=seed)
    last_hour = [share for now, share, source in used if now >= used[-1][0] - 3600]
    assert all(0.85 <= share <= 1.1 for share in last_hour), (min(last_hour), max(last_hour))
    assert used[-1][2] == "learned"


def test_converges_with_startup_delays():
    for start in (0.5, 2.0):
        used = synthetic_run(1500.0, start, seed=1, startup_ticks=8)  # 120 s
        assert 0.85 <= used[-1][1] <= 1.1, (start, used[-1])


# --- the round trip through status ----------------------------------------------------------------


def test_a_restarted_operator_resumes_the_learner():
    """Status holds the learner's whole memory: halfway through, a history read back from the JSON the
    operator writes decides every later tick exactly as the uninterrupted one."""
    spec = learned_spec(start=500)
    rng = random.Random(7)
    rows = [(rng.uniform(300, 1400), rng.choice([0.3, 0.3, 2.5]), rng.choice([0.0, 0.0, 12.0])) for _ in range(120)]

    def run(restart_at: int | None):
        history, current, out = History(), 4, []
        for tick, (per_replica, ttft, queue) in enumerate(rows):
            if tick == restart_at:
                stored = json.loads(json.dumps(history_to_status(history).model_dump(by_alias=True, mode="json")))
                history = history_from_status(AutoscalerState.model_validate(stored))
            decision = decide(sig(per_replica, current, ttft=ttft, queue=queue), spec,
                              ReplicaState(current, current), history, 1000.0 + 15 * tick)
            history, current = decision.history, decision.desired
            stored = json.loads(json.dumps(history_to_status(history).model_dump(by_alias=True, mode="json")))
            assert history_from_status(AutoscalerState.model_validate(stored)).capacity == history.capacity
            out.append((decision.desired, decision.capacity_per_replica, decision.reason))
        return out, history

    straight, history = run(None)
    assert run(60)[0] == straight
    status = history_to_status(history).model_dump(by_alias=True, mode="json")["capacity"]
    assert status["samples"] > MIN_SAMPLES and status["tokensPerSecondPerReplica"] is not None
    assert {"confidence", "lastMoved", "lowerBound", "upperBound"} <= set(status)


def test_the_demo_learns_by_default():
    """`tokenscale demo` without --target-tokens-per-second: its InferenceService learns the capacity,
    and is valid both for the operator's models and for the CRD's schema and CEL rules."""
    import pathlib

    from tests.support.crdcheck import validate
    from tokenscale.api.models import InferenceService
    from tokenscale.commands import demo as command
    from tokenscale.local.scenario import DemoConfig

    parser = __import__("argparse").ArgumentParser()
    command.add_arguments(parser)
    assert parser.parse_args([]).target_tokens_per_second is None
    service = DemoConfig(learned_capacity=True).inference_service(pathlib.Path("/models/tiny"))
    parsed = InferenceService.model_validate(service)
    assert str(parsed.spec.autoscaling.capacity.source) == "Learned" and parsed.spec.autoscaling.slo.ttft_seconds == 1.0
    assert validate(service, crd()) == []
    assert "capacity" not in DemoConfig().inference_service(pathlib.Path("/models/tiny"))["spec"]["autoscaling"]
