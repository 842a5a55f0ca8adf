"""Builders: every child validates against Kubernetes' own schemas; drift, replicas and status rules."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from tests.unit.test_pod import PLATFORM
from tokenscale import desired
from tokenscale.api import EngineType, parse_spec
from tokenscale.desired import conditions
from tokenscale.desired.drift import differences, parse_quantity

K8S_VERSION = "1.33"

VARIANTS: dict[str, dict[str, Any]] = {
    "minimal": {"model": {"source": "org/model"}},
    "full": {
        "model": {"source": "org/model", "servedName": "model", "revision": "main"},
        "engine": {"maxBatchSize": 128, "maxModelLen": 8192, "args": ["--seed", "1"],
                   "env": [{"name": "LOG_LEVEL", "value": "debug"}]},
        "resources": {"gpus": 4, "gpuResourceName": "nvidia.com/gpu", "cpu": "16", "memory": "128Gi",
                      "sharedMemory": "16Gi"},
        "scheduling": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                   "labelSelector": {"matchLabels": {"tokenscale.io/service": "x"}}}}]}},
            "priorityClassName": "inference-high", "runtimeClassName": "nvidia",
        },
        "modelCache": {"persistentVolumeClaim": "model-cache"},
        "secrets": {"huggingFaceToken": {"name": "hf", "key": "token"}},
        "monitoring": {"podMonitor": True},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10},
    },
    "platform": PLATFORM,  # spec.pod, env valueFrom/envFrom, volumes and mounts, topology spread
    "manual-one-replica": {"model": {"source": "/models/local-llama"}, "autoscaling": {"enabled": False},
                           "replicas": 1, "modelCache": {"sizeLimit": "200Gi"}},
    "manual-three-replicas-cpu-quantities": {
        "model": {"source": "org/model"}, "autoscaling": {"enabled": False}, "replicas": 3,
        "resources": {"gpus": 1, "cpu": "500m", "memory": "1.5Gi"},
    },
}


def make_spec(engine: str, variant: str) -> Any:
    raw = copy.deepcopy(VARIANTS[variant])
    raw.setdefault("engine", {})["type"] = engine
    return parse_spec(raw)


def make_children(engine: str, variant: str, current: int | None = None) -> desired.DesiredChildren:
    return desired.children("llama", "serving", make_spec(engine, variant), current_replicas=current,
                          default_server_image="ghcr.io/tokenscale/server:0.1.0")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("engine", [engine.value for engine in EngineType])
def test_children_validate_against_kubernetes_schemas(engine, variant):
    children = make_children(engine, variant)
    objects = [children.deployment, children.service]
    if children.pod_disruption_budget is not None:
        objects.append(children.pod_disruption_budget)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_validation_really_rejects_a_broken_object():
    deployment = make_children("vllm", "minimal").deployment
    deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["httpGets"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_labels_selector_and_pod_template():
    children = make_children("vllm", "full")
    deployment = children.deployment
    labels = deployment["metadata"]["labels"]
    assert labels["tokenscale.io/service"] == "llama"
    for key in ("name", "instance", "component", "managed-by", "part-of"):
        assert f"app.kubernetes.io/{key}" in labels
    assert labels["app.kubernetes.io/managed-by"] == "tokenscale"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == desired.selector_labels("llama")
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert children.service["spec"]["selector"] == selector
    assert children.pod_disruption_budget["spec"]["selector"]["matchLabels"] == selector
    assert desired.selector_string("llama") == "app.kubernetes.io/instance=llama,tokenscale.io/service=llama"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "inference-high" and pod["runtimeClassName"] == "nvidia"
    assert "podAntiAffinity" in pod["affinity"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert pod["automountServiceAccountToken"] is False


def test_selector_does_not_depend_on_the_engine():
    # A Deployment's selector is immutable: switching engines must not change it.
    assert (make_children("vllm", "minimal").deployment["spec"]["selector"]
            == make_children("tgi", "minimal").deployment["spec"]["selector"])


def test_rollout_keeps_serving_capacity_and_waits_for_model_loads():
    spec = make_children("vllm", "minimal").deployment["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    container = spec["template"]["spec"]["containers"][0]
    startup = container["startupProbe"]
    assert spec["progressDeadlineSeconds"] > startup["periodSeconds"] * startup["failureThreshold"]


def test_service_exposes_the_openai_port():
    service = make_children("sglang", "minimal").service
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP",
                                         "appProtocol": "http"}]
    assert service["spec"]["type"] == "ClusterIP"


def test_builtin_uses_the_configured_image_and_others_their_release_image():
    assert make_children("builtin", "minimal").deployment["spec"]["template"]["spec"]["containers"][0]["image"] \
        == "ghcr.io/tokenscale/server:0.1.0"
    assert make_children("vllm", "minimal").deployment["spec"]["template"]["spec"]["containers"][0]["image"] \
        .startswith("vllm/vllm-openai:")


def test_replicas_belong_to_the_autoscaler_or_to_spec_replicas():
    auto = parse_spec({"model": {"source": "m"}, "replicas": 3,
                       "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}})
    assert desired.deployment_replicas(auto, None) == 3  # a new Deployment starts at spec.replicas
    assert desired.deployment_replicas(auto, 5) == 5  # then the autoscaler's count stands
    assert desired.deployment_replicas(auto, 9) == 6  # clamped when the bounds shrink
    assert desired.deployment_replicas(auto, 1) == 2
    manual = parse_spec({"model": {"source": "m"}, "replicas": 3, "autoscaling": {"enabled": False}})
    assert desired.deployment_replicas(manual, 7) == 3
    dry_run = parse_spec({"model": {"source": "m"}, "replicas": 2, "autoscaling": {"mode": "DryRun"}})
    assert desired.deployment_replicas(dry_run, 5) == 2  # DryRun recommends; spec.replicas acts


def test_pod_disruption_budget_only_when_more_than_one_replica_is_possible():
    assert make_children("vllm", "manual-one-replica").pod_disruption_budget is None
    assert make_children("vllm", "manual-three-replicas-cpu-quantities").pod_disruption_budget is not None
    assert make_children("vllm", "full").pod_disruption_budget["spec"] == {
        "maxUnavailable": 1, "selector": {"matchLabels": desired.selector_labels("llama")}}
    one_max = parse_spec({"model": {"source": "m"}, "autoscaling": {"minReplicas": 1, "maxReplicas": 1}})
    assert not desired.may_run_several(one_max)


def test_pod_monitor_gives_prometheus_the_grouping_labels():
    assert make_children("vllm", "minimal").pod_monitor is None
    monitor = make_children("trtllm", "full").pod_monitor
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["selector"]["matchLabels"] == desired.selector_labels("llama")
    assert "tokenscale.io/service" in monitor["spec"]["podTargetLabels"]
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/prometheus/metrics")
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert targets["tokenscale_io_service"] == ["__meta_kubernetes_pod_label_tokenscale_io_service"]
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]
    custom = desired.pod_monitor("llama", "serving", make_spec("vllm", "full"), service_label="svc",
                               namespace_label="ns")
    assert {r["targetLabel"] for r in custom["spec"]["podMetricsEndpoints"][0]["relabelings"]} >= {"svc", "ns"}


# --- drift --------------------------------------------------------------------------------------


def _as_served(deployment: dict[str, Any]) -> dict[str, Any]:
    """What an API server gives back: defaults filled in, quantities canonical, status added."""
    live = copy.deepcopy(deployment)
    live["metadata"].update(uid="u", resourceVersion="7", generation=3, annotations={"a": "b"})
    live["metadata"]["labels"]["added-by-someone"] = "x"
    pod = live["spec"]["template"]["spec"]
    pod.update(restartPolicy="Always", dnsPolicy="ClusterFirst", schedulerName="default-scheduler")
    for container in pod["containers"]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        resources = container.get("resources", {})
        for group in resources.values():
            for key, value in group.items():
                group[key] = {"500m": "500m", "1.5Gi": "1536Mi", "16": "16"}.get(value, value)
    live["status"] = {"replicas": 3}
    return live


def test_server_defaults_and_canonical_quantities_are_not_drift():
    desired = make_children("vllm", "manual-three-replicas-cpu-quantities").deployment
    assert differences(desired, _as_served(desired)) == []


def test_hand_edits_are_drift():
    desired = make_children("vllm", "full").deployment
    live = _as_served(desired)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:latest"
    live["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "EXTRA", "value": "1"})
    live["spec"]["template"]["spec"]["nodeSelector"] = {}
    found = differences(desired, live)
    assert ".spec.template.spec.containers[0].image" in found
    assert ".spec.template.spec.containers[0].env" in found
    assert ".spec.template.spec.nodeSelector.nvidia.com/gpu.product" in found


def test_parse_quantity():
    assert parse_quantity("1.5Gi") == parse_quantity("1536Mi")
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity(2) == parse_quantity("2")
    assert parse_quantity("1e3") == parse_quantity("1k")
    assert parse_quantity("banana") is None and parse_quantity(True) is None


# --- conditions and status -------------------------------------------------------------------------


def test_set_condition_moves_the_transition_time_only_on_a_flip():
    first = conditions.set_condition([], "Ready", False, "NoReplicaReady", at="2026-01-01T00:00:00Z")
    same = conditions.set_condition(first, "Ready", False, "StillLoading", "msg", at="2026-01-01T00:05:00Z")
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and same[0]["reason"] == "StillLoading"
    flipped = conditions.set_condition(same, "Ready", True, "ReplicasReady", at="2026-01-01T00:09:00Z")
    assert flipped[0]["status"] == "True" and flipped[0]["lastTransitionTime"] == "2026-01-01T00:09:00Z"
    other = conditions.set_condition(flipped, "MetricsAvailable", "Unknown", "NoPrometheus")
    assert [c["type"] for c in other] == ["Ready", "MetricsAvailable"]
    assert first[0]["reason"] == "NoReplicaReady"  # inputs are not mutated


def test_condition_is_compares_status_reason_and_message():
    items = conditions.set_condition([], "Degraded", True, "InvalidSpec", "spec.x: bad")
    assert conditions.condition_is(items, "Degraded", True, "InvalidSpec", "spec.x: bad")
    assert not conditions.condition_is(items, "Degraded", False, "InvalidSpec", "spec.x: bad")
    assert not conditions.condition_is(items, "Degraded", True, "ApplyFailed", "spec.x: bad")
    assert not conditions.condition_is(items, "Degraded", True, "InvalidSpec", "spec.y: bad")
    assert not conditions.condition_is(items, "Ready", True, "InvalidSpec", "spec.x: bad")  # absent
    assert conditions.condition_is(conditions.set_condition([], "M", "Unknown", "R"), "M", "Unknown", "R")


def _deployment(replicas: int, ready: int, updated: int | None = None, generation: int = 2,
                observed: int = 2, stuck: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {"replicas": replicas, "readyReplicas": ready,
                              "updatedReplicas": replicas if updated is None else updated,
                              "observedGeneration": observed}
    if stuck:
        status["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                 "message": "ReplicaSet has timed out progressing."}]
    return {"metadata": {"generation": generation}, "spec": {"replicas": replicas}, "status": status}


def _status(deployment: dict[str, Any] | None, previous: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return conditions.workload_status(deployment, generation=4, conditions=previous, endpoint="http://e/v1",
                                      selector="s=1")


def _cond(status: dict[str, Any], kind: str) -> tuple[str, str]:
    found = conditions.get_condition(status["conditions"], kind)
    return found["status"], found["reason"]


def test_workload_status_phases_and_conditions():
    missing = _status(None)
    assert missing["phase"] == "Pending" and _cond(missing, "Ready") == ("False", "DeploymentMissing")

    loading = _status(_deployment(2, 0))
    assert loading["phase"] == "Progressing" and _cond(loading, "Ready")[0] == "False"
    assert _cond(loading, "Progressing") == ("True", "RollingOut")

    partly = _status(_deployment(2, 1))
    assert partly["phase"] == "Progressing" and _cond(partly, "Ready") == ("True", "ReplicasReady")

    ready = _status(_deployment(2, 2))
    assert ready["phase"] == "Ready" and _cond(ready, "Progressing") == ("False", "Stable")
    assert (ready["replicas"], ready["readyReplicas"], ready["observedGeneration"]) == (2, 2, 4)
    assert ready["endpoint"] == "http://e/v1" and ready["selector"] == "s=1"
    assert _cond(ready, "Degraded") == ("False", "AsExpected")

    rolling = _status(_deployment(2, 2, generation=3, observed=2))
    assert rolling["phase"] == "Progressing"

    idle = _status(_deployment(0, 0))
    assert idle["phase"] == "Idle" and _cond(idle, "Ready") == ("False", "ScaledToZero")

    stuck = _status(_deployment(2, 1, stuck=True))
    assert stuck["phase"] == "Degraded" and _cond(stuck, "Degraded") == ("True", "RolloutStuck")
    recovered = _status(_deployment(2, 2), stuck["conditions"])
    assert _cond(recovered, "Degraded") == ("False", "AsExpected")


def test_an_invalid_spec_is_degraded_until_realised():
    degraded = conditions.degraded_status(None, reason="InvalidSpec", message="spec.x: bad", generation=5)
    assert degraded["phase"] == "Degraded" and degraded["observedGeneration"] == 5
    assert _cond(degraded, "Degraded") == ("True", "InvalidSpec")
    fixed = _status(_deployment(1, 1), degraded["conditions"])
    assert _cond(fixed, "Degraded") == ("False", "AsExpected") and fixed["phase"] == "Ready"
    # Someone else's Degraded reason (e.g. the autoscaler's) is left alone.
    foreign = conditions.set_condition(None, "Degraded", True, "GPUsUnschedulable", "no GPU")
    kept = _status(_deployment(1, 1), foreign)
    assert _cond(kept, "Degraded") == ("True", "GPUsUnschedulable") and kept["phase"] == "Degraded"


def test_endpoint_url():
    assert conditions.endpoint_url("llama", "team", 8000) == "http://llama.team.svc.cluster.local:8000/v1"
    assert conditions.endpoint_url("a", "b", 80, "corp.internal") == "http://a.b.svc.corp.internal:80/v1"


def test_overlay_keeps_server_fields_and_replaces_lists():
    from tokenscale.desired.drift import overlay

    live = {"clusterIP": "10.0.0.7", "ports": [{"port": 1}, {"port": 2}], "selector": {"a": "1", "b": "2"}}
    desired = {"ports": [{"port": 8000}], "selector": {"a": "x"}}
    assert overlay(live, desired) == {"clusterIP": "10.0.0.7", "ports": [{"port": 8000}],
                                      "selector": {"a": "x", "b": "2"}}


def test_merge_conditions_keeps_other_writers_conditions():
    current = conditions.set_condition(None, "Ready", True, "ReplicasReady")
    current = conditions.set_condition(current, "MetricsAvailable", True, "SignalsFresh")
    mine = conditions.set_condition(None, "Ready", False, "NoReplicaReady")
    merged = conditions.merge_conditions(current, mine + conditions.set_condition(None, "Degraded", False, "AsExpected"))
    assert [(c["type"], c["status"]) for c in merged] == [("Ready", "False"), ("MetricsAvailable", "True"),
                                                          ("Degraded", "False")]
