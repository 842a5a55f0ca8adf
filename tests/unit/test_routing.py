"""Routing at zero: the activator's EndpointSlice, when it is needed, and the activation signal."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tokenscale.api import parse_spec
from tokenscale.api.models import AutoscalingSpec
from tokenscale.api.wire import rfc3339
from tokenscale.desired.routing import (
    ACTIVATION_ANNOTATION,
    SERVICE_NAME_LABEL,
    SLICE_MANAGER,
    SLICE_MANAGER_LABEL,
    ActivatorEndpoints,
    activation_requested_at,
    activation_signal,
    activator_slice,
    ready_addresses,
    routes_to_activator,
    uses_activator,
    wakes_from_zero,
    with_activation,
)
from tokenscale.policy import History, ReplicaState, Signals, decide

MODEL = {"source": "org/model"}


def spec(**autoscaling):
    return parse_spec({"model": MODEL, "autoscaling": autoscaling})


def test_the_activator_is_a_wake_up_for_min_replicas_zero() -> None:
    assert uses_activator(spec(minReplicas=0, activation={"activator": True}))
    assert not uses_activator(spec(minReplicas=0, activation={"query": "vector(0)"}))
    assert not uses_activator(spec(minReplicas=1, activation={"activator": True}))
    with pytest.raises(ValueError, match="activation needs activator: true or a query"):
        AutoscalingSpec.model_validate({"minReplicas": 0, "activation": {}})
    with pytest.raises(ValueError, match="activator: true, or a query"):
        AutoscalingSpec.model_validate({"minReplicas": 0})


def test_routed_to_the_activator_going_to_zero_and_until_a_replica_is_ready() -> None:
    s = spec(minReplicas=0, activation={"activator": True})
    assert routes_to_activator(s, desired_replicas=0, ready_replicas=1)  # before the last replica stops
    assert routes_to_activator(s, desired_replicas=1, ready_replicas=0)  # waking: keep holding
    assert not routes_to_activator(s, desired_replicas=1, ready_replicas=1)
    query_only = spec(minReplicas=0, activation={"query": "x"})
    assert not routes_to_activator(query_only, desired_replicas=0, ready_replicas=0)


def test_the_slice_is_a_valid_endpointslice_for_the_services_port() -> None:
    owner = {"apiVersion": "tokenscale.io/v1alpha1", "kind": "InferenceService",
             "metadata": {"name": "llama", "uid": "u-1"}}
    body = activator_slice("llama", "team-a", port_name="http",
                           endpoints=ActivatorEndpoints(("10.0.0.5", "10.0.0.6"), 8080), owner=owner)
    kubernetes_validate.validate(body, "1.33", strict=True)  # the real schema, unknown fields rejected
    assert body["metadata"]["name"] == "llama-activator"
    labels = body["metadata"]["labels"]
    assert labels[SERVICE_NAME_LABEL] == "llama" and labels[SLICE_MANAGER_LABEL] == SLICE_MANAGER
    assert body["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert [e["addresses"] for e in body["endpoints"]] == [["10.0.0.5"], ["10.0.0.6"]]
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    six = activator_slice("x", "y", port_name="http", endpoints=ActivatorEndpoints(("fd00::5",), 8080))
    assert six["addressType"] == "IPv6"


def test_ready_addresses_skip_the_activators_slice_and_unready_endpoints() -> None:
    slices = [
        {"metadata": {"labels": {SLICE_MANAGER_LABEL: "endpointslice-controller.k8s.io"}},
         "ports": [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8000}],
         "endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": True}},
                       {"addresses": ["10.1.0.2"], "conditions": {"ready": False}},
                       {"addresses": ["10.1.0.3"], "conditions": {"ready": False, "terminating": True}},
                       {"addresses": ["10.1.0.4"]}]},  # no conditions: read as ready
        {"metadata": {"labels": {SLICE_MANAGER_LABEL: SLICE_MANAGER}},
         "ports": [{"name": "http", "port": 8080}], "endpoints": [{"addresses": ["10.9.0.1"]}]},
    ]
    assert ready_addresses(slices, port_name="http") == [("10.1.0.1", 8000), ("10.1.0.4", 8000)]


def test_a_recent_activation_request_is_demand() -> None:
    annotations = {ACTIVATION_ANNOTATION: "2026-12-02T06:00:00Z"}
    at = activation_requested_at(annotations)
    assert at is not None
    assert activation_signal(annotations, at + 5) == 1.0
    assert activation_signal(annotations, at + 31) == 0.0
    assert activation_signal({}, at) == 0.0
    assert activation_signal({ACTIVATION_ANNOTATION: "yesterday"}, at) == 0.0


def test_only_a_request_newer_than_the_scale_to_zero_wakes_it() -> None:
    now = 1000.0
    assert wakes_from_zero(now - 2, zero_since=now - 10, now=now)  # held after it went to zero
    assert not wakes_from_zero(now - 20, zero_since=now - 10, now=now)  # answered before; stamp still fresh
    assert wakes_from_zero(now - 20, zero_since=None, now=now)  # a restarted operator: recent is enough
    assert not wakes_from_zero(now - 40, zero_since=None, now=now)  # stale
    assert not wakes_from_zero(None, zero_since=None, now=now)


def test_stamps_round_trip_with_milliseconds() -> None:
    stamp = rfc3339(1_790_000_000.123, millis=True)
    assert stamp.endswith(".123Z")
    assert activation_requested_at({ACTIVATION_ANNOTATION: stamp}) == pytest.approx(1_790_000_000.123)


def test_the_tick_reads_a_recent_request_as_demand_and_none_as_zero() -> None:
    s = spec(minReplicas=0, activation={"activator": True}, scaleToZeroAfterSeconds=60)
    now = 10_000.0
    at_zero = ReplicaState(current=0, ready=0)
    woken = decide(with_activation(Signals(), s, now - 3, now), s.autoscaling, at_zero, History(), now)
    assert (woken.desired, woken.limited_by) == (1, "activation")
    idle = decide(with_activation(Signals(), s, now - 300, now), s.autoscaling, at_zero, History(), now)
    assert (idle.desired, idle.limited_by, idle.metrics_available) == (0, "scaleToZero", True)
    # Just woken, no tokens in the rate window yet: a recent request is activity, not idleness.
    quiet = Signals(tokens_per_second=0.0, queue_depth=0.0, running_requests=0.0)
    history = History(idle_since=now - 3600)
    busy = decide(with_activation(quiet, s, now - 3, now), s.autoscaling, ReplicaState(1, 1), history, now)
    assert busy.desired == 1 and busy.history.idle_since is None
    plain = spec(minReplicas=1)
    assert with_activation(quiet, plain, now, now) is quiet
