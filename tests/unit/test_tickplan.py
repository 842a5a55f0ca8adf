"""The tick's plan (pure): what to write, scale and announce, asserted without Prometheus or a server.

Like KEDA's scale-executor tests: a service's observed state and a decision go in; the status
patch, the scale, the conditions and the Events' texts come out.
"""

from __future__ import annotations

import copy

import pytest

from tokenscale.api import parse_spec, parse_status
from tokenscale.desired.conditions import get_condition
from tokenscale.desired.pods import PodHealth, PodProblem
from tokenscale.desired.tickplan import Packed, PlanSettings, TickInput, durable_digest, moved, plan_tick
from tokenscale.policy import ReplicaState, Signals, decide, history_from_status
from tokenscale.watched import slim_status

T0 = 1_800_000_000.0
TICK = 15.0
SETTINGS = PlanSettings(signal_band=0.1, heartbeat_seconds=4 * TICK)


def spec(**autoscaling):
    scaling = {"minReplicas": 1, "maxReplicas": 8, "targetTokensPerSecondPerReplica": 100,
               "scaleDown": {"stabilizationSeconds": 60, "maxStepPercent": 100, "maxStepPods": 4}}
    scaling.update(autoscaling)
    return parse_spec({"model": {"source": "org/m"}, "autoscaling": scaling, "costPerGpuHour": 2.0})


def deployment(replicas, ready):
    return {"metadata": {"generation": 1}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                       "readyReplicas": ready}}


def merge(status, patch):
    """The API server's merge patch of /status (lists replaced whole, null removes)."""
    result = copy.deepcopy(status)
    for key, value in (patch or {}).items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = copy.deepcopy(value)
    return result


class Service:
    """One service ticked through decide and plan; status changes only by the planned patches."""

    def __init__(self, the_spec=None, replicas=1, ready=1):
        self.spec = the_spec or spec()
        self.status: dict = {}
        self.replicas, self.ready = replicas, ready
        self.memory = None  # the operator's in-memory history (None: a restarted operator)
        self.last_write = None
        self.writes = 0

    def observed(self):
        return self.status

    def tick(self, now, signals, *, pods=PodHealth(), unavailable=None, remember=True):
        history = self.memory if (remember and self.memory is not None) else history_from_status(
            parse_status(self.status).autoscaler)
        replicas = ReplicaState(current=self.replicas, ready=self.ready, failing=len(pods.failing),
                                failing_reason=pods.reason)
        decision = None
        if self.spec.autoscaling.enabled:
            decision = decide(signals if unavailable is None else Signals(), self.spec.autoscaling, replicas,
                              history, now)
        plan = plan_tick(TickInput(
            name="chat", namespace="team", generation=1, spec=self.spec, status=self.observed(), decision=decision,
            signals=signals, unavailable=unavailable, no_prometheus=False, replicas=replicas, pods=pods,
            deployment=deployment(self.replicas, self.ready), endpoint="http://chat.team:8000/v1",
            selector="app=chat", now=now, last_write=self.last_write if remember else None, settings=SETTINGS))
        if decision is not None:
            self.memory = decision.history
        if plan.status_patch is not None:
            self.status = merge(self.status, plan.status_patch)
            self.writes += 1
            if "signals" in plan.status_patch:
                self.last_write = now
        if plan.scale_to is not None:
            self.replicas = self.ready = plan.scale_to
        return decision, plan


def steady(tokens=150.0):
    return Signals(tokens_per_second=tokens, tokens_per_second_long=tokens, queue_depth=0.0, running_requests=4.0,
                   sample_age_seconds=3.0)


def test_first_tick_writes_everything_and_a_steady_service_then_writes_nothing():
    service = Service(replicas=2, ready=2)
    _, first = service.tick(T0, steady())
    assert first.status_patch is not None and "decision" in first.why and first.scale_to is None
    assert first.status_patch["signals"]["tokensPerSecond"] == 150.0
    assert first.status_patch["signals"]["heartbeatSeconds"] == 60.0
    assert {c[0] for c in first.conditions} >= {"MetricsAvailable", "ScalingActive", "ScalingLimited", "Ready"}
    assert first.events == ()
    for k in range(1, 4):  # the load wanders within the band: no write, no event
        _, plan = service.tick(T0 + k * TICK, steady(150.0 + 3 * k))
        assert plan.status_patch is None and plan.events == () and plan.why == ()


def test_a_signal_beyond_the_band_is_written_and_the_heartbeat_writes_anyway():
    service = Service(replicas=2, ready=2)
    service.tick(T0, steady(150.0))
    _, moved_plan = service.tick(T0 + TICK, steady(170.0))  # +13 %: beyond 10 %
    assert moved_plan.why == ("signals:tokensPerSecond,tokensPerSecondLong",)
    assert moved_plan.status_patch["signals"]["tokensPerSecond"] == 170.0
    assert set(moved_plan.status_patch) <= {"signals", "autoscaler", "costPerMillionTokens"}
    quiet = [service.tick(T0 + k * TICK, steady(170.0))[1] for k in (2, 3, 4)]
    assert [p.status_patch for p in quiet] == [None, None, None]
    _, beat = service.tick(T0 + 5 * TICK, steady(170.0))  # 60 s after the last write
    assert beat.why == ("heartbeat",) and beat.status_patch["signals"]["sampledAt"] == "2027-01-15T08:01:15Z"


def test_a_scale_up_plans_the_scale_its_event_and_the_decision():
    service = Service(replicas=1, ready=1)
    service.tick(T0, steady(90.0))
    decision, plan = service.tick(T0 + TICK, steady(290.0))
    assert plan.scale_to == 3 == decision.desired
    assert [(e.type, e.reason, e.after_scale) for e in plan.events] == [("Normal", "ScaledUp", True)]
    assert plan.events[0].message == decision.reason and "1 -> 3" in decision.reason
    record = plan.status_patch["decisions"][-1]
    assert (record["fromReplicas"], record["toReplicas"]) == (1, 3)
    assert plan.status_patch["lastScaleTime"] and plan.status_patch["desiredReplicas"] == 3


def test_dry_run_recommends_and_never_scales():
    service = Service(spec(mode="DryRun"), replicas=1, ready=1)
    _, plan = service.tick(T0, steady(390.0))
    assert plan.scale_to is None and plan.events == ()
    assert plan.status_patch["recommendedReplicas"] == 4 and plan.status_patch["desiredReplicas"] == 1
    assert ("ScalingActive", "False", "DryRun", "DryRun: recommends 4 replica(s), never acts") in plan.conditions


def test_prometheus_down_holds_and_says_why_without_touching_the_signals():
    service = Service(replicas=2, ready=2)
    service.tick(T0, steady())
    _, plan = service.tick(T0 + TICK, steady(), unavailable="Prometheus at http://p:9090 unreachable: refused")
    assert plan.scale_to is None and "signals" not in plan.status_patch
    available = get_condition(plan.status_patch["conditions"], "MetricsAvailable")
    assert (available["status"], available["reason"]) == ("False", "PrometheusUnavailable")
    assert "unreachable" in available["message"]
    assert ("ScalingActive", "False", "MetricsUnavailable", "holding the replica count until metrics return") \
        in plan.conditions
    # The outage goes on: nothing new to say, nothing written.
    assert service.tick(T0 + 2 * TICK, steady(), unavailable="Prometheus at http://p:9090 unreachable: refused"
                        )[1].status_patch is None


def test_a_crash_looping_pod_is_reported_once_and_not_counted_as_capacity():
    crash = PodHealth.of([PodProblem("chat-1", "CrashLoopBackOff", "server", "exit code 1: OSError: no model", 7)])
    service = Service(replicas=1, ready=0)
    decision, plan = service.tick(T0, steady(), pods=crash)
    ready = get_condition(plan.status_patch["conditions"], "Ready")
    degraded = get_condition(plan.status_patch["conditions"], "Degraded")
    message = "1 pod(s) cannot start: CrashLoopBackOff (pod chat-1 container server, 7 restart(s)): exit code 1: " \
              "OSError: no model"
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "CrashLoopBackOff", message)
    assert (degraded["status"], degraded["reason"]) == ("True", "CrashLoopBackOff")
    assert "loading the model" not in str(plan.status_patch)
    assert [(e.type, e.reason, e.message) for e in plan.events] == [("Warning", "CrashLoopBackOff", message)]
    limited = get_condition(plan.status_patch["conditions"], "ScalingLimited")
    assert (limited["status"], limited["reason"]) == ("True", "PodsFailing")
    assert "not counted as capacity on its way" in limited["message"]
    assert decision.limited_by == "podsFailing" and "cannot start (CrashLoopBackOff)" in decision.reason
    # The next ticks: the same failure, no second event.
    assert service.tick(T0 + TICK, steady(), pods=crash)[1].events == ()


def test_manual_mode_reports_autoscaling_disabled():
    service = Service(spec(enabled=False), replicas=2, ready=2)
    _, plan = service.tick(T0, steady())
    active = get_condition(plan.status_patch["conditions"], "ScalingActive")
    assert (active["status"], active["reason"]) == ("False", "AutoscalingDisabled")
    assert "signals" not in plan.status_patch and plan.scale_to is None
    assert service.tick(T0 + TICK, steady())[1].status_patch is None


def test_a_restart_between_writes_decides_the_same():
    """What is lost when the operator restarts between writes: the queue's last reading and the burst
    window's samples since the last write (status.autoscaler is written on every material change).
    The recommendations that the stabilisation windows read are durable: a change is a write."""
    service = Service(replicas=4, ready=4)
    loads = [390.0, 380.0, 385.0, 160.0, 150.0, 155.0, 150.0, 152.0, 149.0, 151.0]
    for k, load in enumerate(loads):
        now = T0 + k * TICK
        restarted = copy.deepcopy(service)
        remembered, _ = service.tick(now, steady(load))
        resumed, _ = restarted.tick(now, steady(load), remember=False)
        assert (resumed.desired, resumed.limited_by) == (remembered.desired, remembered.limited_by), k
    assert service.writes < len(loads)  # and yet not every tick was written


def test_band_is_relative_and_appearances_count():
    assert moved({"tokensPerSecond": 100.0}, {"tokensPerSecond": 109.0}, 0.1) == []
    assert moved({"tokensPerSecond": 100.0}, {"tokensPerSecond": 112.0}, 0.1) == ["tokensPerSecond"]
    assert moved({"queueDepth": 0.0}, {"queueDepth": 1.0}, 0.1) == ["queueDepth"]
    assert moved({}, {"activation": 0.0}, 0.1) == ["activation"]
    assert moved({"sampleAgeSeconds": 1.0}, {"sampleAgeSeconds": 9.0}, 0.1) == []


@pytest.mark.parametrize("heartbeat", [15.0, 60.0])
def test_the_heartbeat_bounds_the_age_of_sampled_at(heartbeat):
    service = Service(replicas=2, ready=2)
    settings = PlanSettings(heartbeat_seconds=heartbeat)
    ages = []
    for k in range(12):
        now = T0 + k * TICK
        plan = plan_tick(TickInput(
            name="chat", namespace="team", generation=1, spec=service.spec, status=service.status,
            decision=decide(steady(), service.spec.autoscaling, ReplicaState(2, 2),
                            history_from_status(parse_status(service.status).autoscaler), now),
            signals=steady(), unavailable=None, no_prometheus=False, replicas=ReplicaState(2, 2), pods=PodHealth(),
            deployment=deployment(2, 2), endpoint="e", selector="s", now=now, settings=settings))
        service.status = merge(service.status, plan.status_patch)
        from tokenscale.desired.tickplan import parse_rfc3339

        ages.append(now - parse_rfc3339(service.status["signals"]["sampledAt"]))
    assert max(ages) < heartbeat


def test_a_heartbeat_a_little_short_of_n_ticks_is_due():
    """Ticks start just after their grid point: 19.998 s after the last write is the 20 s heartbeat."""
    service = Service(replicas=2, ready=2)
    service.tick(T0 + 0.003, steady())
    settings = PlanSettings(heartbeat_seconds=20.0, slack_seconds=2.5)
    plan = plan_tick(TickInput(
        name="chat", namespace="team", generation=1, spec=service.spec, status=service.status,
        decision=decide(steady(), service.spec.autoscaling, ReplicaState(2, 2), service.memory, T0 + 20.001),
        signals=steady(), unavailable=None, no_prometheus=False, replicas=ReplicaState(2, 2), pods=PodHealth(),
        deployment=deployment(2, 2), endpoint="e", selector="s", now=T0 + 20.001, last_write=T0 + 0.003,
        settings=settings))
    assert plan.why == ("heartbeat",)


class WatchedService(Service):
    """The same service, planned from the operator's slim watched view of its status
    (watched.slim_status: only the fields the tick reads, memory and decisions packed)."""

    def observed(self):
        return slim_status(self.status)


def test_the_slim_watched_status_plans_exactly_as_the_whole_status():
    loads = [150.0, 390.0, 900.0, 905.0, 880.0, 400.0, 160.0, 150.0, 151.0, 40.0, 0.0, 0.0, 300.0]
    whole, slim = Service(replicas=2, ready=2), WatchedService(replicas=2, ready=2)
    for k, load in enumerate(loads * 2):
        now = T0 + k * TICK
        expected = whole.tick(now, steady(load), remember=k % 5 != 4)
        got = slim.tick(now, steady(load), remember=k % 5 != 4)
        assert got == expected, k
        assert slim.status == whole.status, k
    assert whole.writes > 3 and len(whole.status["decisions"]) > 3


def test_the_watched_view_keeps_only_what_the_tick_reads_and_shares_equal_specs():
    from tokenscale.watched import WatchedState

    service = Service(replicas=2, ready=2)
    for k, load in enumerate([150.0, 390.0, 900.0]):
        service.tick(T0 + k * TICK, steady(load))
    state = WatchedState()
    for name in ("a", "b"):
        body = {"metadata": {"namespace": "team", "name": name, "uid": name, "generation": 1, "resourceVersion": "7"},
                "spec": {"model": {"source": "org/m"}}, "status": dict(service.status, endpoint="http://x")}
        state.service_event("ADDED", body)
    a, b = state.services["team", "a"], state.services["team", "b"]
    assert a.spec is b.spec  # one copy of a spec the fleet shares
    assert isinstance(a.status["decisions"], Packed) and isinstance(a.status["autoscaler"], Packed)
    assert "endpoint" not in a.status  # written by the tick, never read from the cache
    assert a.full_status() == {k: v for k, v in service.status.items() if k != "endpoint"}
    assert a.owner()["status"]["decisions"] == service.status["decisions"]


def test_memory_written_with_whole_numbers_is_the_same_memory():
    """A real API server may render 1800000000.0 as 1800000000: that is no change of memory."""
    memory = {"recommendations": [{"time": T0, "replicas": 2}], "lastScaleUp": T0, "panicUntil": None}
    rendered = {"recommendations": [{"time": int(T0), "replicas": 2}], "lastScaleUp": int(T0)}
    assert durable_digest(memory) == durable_digest(rendered) == Packed(rendered).digest
    assert durable_digest(memory) != durable_digest(dict(memory, lastScaleUp=T0 + 1))
