"""The operator against the emulated API over real HTTP: real kopf, the real kubernetes client."""

from __future__ import annotations

import pytest

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.usefixtures("operator")

SPEC = {
    "model": {"source": "org/model-8b", "servedName": "model-8b"},
    "engine": {"type": "vllm", "maxModelLen": 4096},
    "resources": {"gpus": 2, "gpuResourceName": "nvidia.com/gpu", "memory": "32Gi"},
    "secrets": {"huggingFaceToken": {"name": "hf", "key": "token"}},
    "autoscaling": {"enabled": False},
    "replicas": 2,
}


def _deployment(cluster, namespace, name):
    return cluster.apps.read_namespaced_deployment(name, namespace)


def test_create_builds_deployment_and_service(cluster):
    cluster.create_service("team-a", "llama", SPEC)
    deployment = wait_for(lambda: _deployment(cluster, "team-a", "llama"), message="the Deployment")
    owner = cluster.get_service("team-a", "llama")
    container = deployment.spec.template.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "2"
    assert "--tensor-parallel-size" in container.args and container.args[container.args.index("--tensor-parallel-size") + 1] == "2"
    assert container.startup_probe.http_get.path == "/health"
    assert container.readiness_probe is not None and container.liveness_probe is not None
    assert deployment.spec.replicas == 2
    assert deployment.metadata.labels["tokenscale.io/service"] == "llama"
    assert deployment.spec.template.metadata.labels["app.kubernetes.io/managed-by"] == "tokenscale"
    ref = deployment.metadata.owner_references[0]
    assert (ref.kind, ref.name, ref.uid, ref.controller) == ("InferenceService", "llama", owner["metadata"]["uid"], True)
    service = wait_for(lambda: cluster.core.read_namespaced_service("llama", "team-a"), message="the Service")
    assert service.spec.ports[0].port == 8000
    assert service.spec.selector == deployment.spec.selector.match_labels
    pdb = wait_for(lambda: cluster.policy.read_namespaced_pod_disruption_budget("llama", "team-a"), message="PDB")
    assert pdb.spec.max_unavailable == 1

    status = wait_for(lambda: (cluster.get_service("team-a", "llama").get("status") or {}).get("endpoint") and
                      cluster.get_service("team-a", "llama")["status"], message="status")
    assert status["endpoint"] == "http://llama.team-a.svc.cluster.local:8000/v1"
    assert status["observedGeneration"] == owner["metadata"]["generation"]
    assert status["selector"] == "app.kubernetes.io/instance=llama,tokenscale.io/service=llama"

    cluster.set_deployment_ready("team-a", "llama", ready=2)
    wait_for(lambda: (cluster.condition("team-a", "llama", "Ready") or {}).get("status") == "True", message="Ready")
    status = cluster.get_service("team-a", "llama")["status"]
    assert status["readyReplicas"] == 2 and status["phase"] == "Ready"
    assert cluster.condition("team-a", "llama", "Progressing")["status"] == "False"
    events = wait_for(lambda: [e for e in cluster.events_for("team-a", "llama") if e.reason == "Created"],
                      message="a Created event")
    assert any("Deployment created" in e.message for e in events)


def _writes(cluster):
    return sum(1 for r in cluster.emulator.request_log if r.verb in ("create", "update", "patch", "delete"))


def _settled(cluster, seconds=1.0):
    """No more writes for a while: the operator is idle, not looping."""
    import time

    before = _writes(cluster)
    time.sleep(seconds)
    return _writes(cluster) == before


def _wait_settled(cluster, namespace, name):
    """The operator has handled the current spec (status.observedGeneration caught up)."""
    wait_for(lambda: (o := cluster.get_service(namespace, name)).get("status", {}).get("observedGeneration")
             == o["metadata"]["generation"], message="observedGeneration")


def test_spec_change_updates_the_deployment(cluster):
    cluster.create_service("team-b", "qwen", {**SPEC, "replicas": 1})
    wait_for(lambda: _deployment(cluster, "team-b", "qwen"), message="the Deployment")
    cluster.patch_service("team-b", "qwen", {"spec": {"engine": {"maxBatchSize": 128, "args": ["--enforce-eager"]},
                                                      "replicas": 3}})
    deployment = wait_for(lambda: (d := _deployment(cluster, "team-b", "qwen")).spec.replicas == 3 and d,
                          message="the updated Deployment")
    args = deployment.spec.template.spec.containers[0].args
    assert args[args.index("--max-num-seqs") + 1] == "128" and args[-1] == "--enforce-eager"
    generation = cluster.get_service("team-b", "qwen")["metadata"]["generation"]
    wait_for(lambda: cluster.get_service("team-b", "qwen")["status"].get("observedGeneration") == generation,
             message="observedGeneration")
    wait_for(lambda: [e for e in cluster.events_for("team-b", "qwen") if e.reason == "Updated"], message="event")
    assert wait_for(lambda: _settled(cluster), message="no write loop")

    # Switching engines rolls the same Deployment over (its selector does not involve the engine).
    selector = _deployment(cluster, "team-b", "qwen").spec.selector.match_labels
    cluster.patch_service("team-b", "qwen", {"spec": {"engine": {"type": "sglang", "args": []}}})
    switched = wait_for(lambda: (d := _deployment(cluster, "team-b", "qwen")).spec.template.spec.containers[0]
                        .image.startswith("lmsysorg/sglang:") and d, message="the SGLang image")
    assert switched.spec.selector.match_labels == selector
    assert switched.spec.template.metadata.labels["app.kubernetes.io/name"] == "sglang"
    assert "--enable-metrics" in switched.spec.template.spec.containers[0].args


def test_deleted_deployment_is_restored(cluster):
    cluster.create_service("team-c", "mistral", SPEC)
    first = wait_for(lambda: _deployment(cluster, "team-c", "mistral"), message="the Deployment")
    _wait_settled(cluster, "team-c", "mistral")
    cluster.apps.delete_namespaced_deployment("mistral", "team-c")
    restored = wait_for(lambda: (d := _deployment(cluster, "team-c", "mistral")).metadata.uid != first.metadata.uid
                        and d, message="a new Deployment")
    assert restored.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"
    wait_for(lambda: [e for e in cluster.events_for("team-c", "mistral") if e.reason == "Repaired"],
             message="a Repaired event")


def test_hand_edits_are_reverted_but_autoscaled_replicas_are_kept(cluster):
    spec = {**SPEC, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 6}, "replicas": 2}
    cluster.create_service("team-d", "phi", spec)
    wait_for(lambda: _deployment(cluster, "team-d", "phi"), message="the Deployment")
    _wait_settled(cluster, "team-d", "phi")
    # Someone changes the image, adds a variable, and scales by hand (the autoscaler's job here).
    deployment = _deployment(cluster, "team-d", "phi")
    container = deployment.spec.template.spec.containers[0]
    cluster.apps.patch_namespaced_deployment("phi", "team-d", {"spec": {"replicas": 5, "template": {"spec": {
        "containers": [{"name": container.name, "image": "evil/image:latest", "args": container.args,
                        "env": [{"name": "EXTRA", "value": "1"}]}]}}}})
    repaired = wait_for(lambda: (d := _deployment(cluster, "team-d", "phi")).spec.template.spec.containers[0].image
                        == "vllm/vllm-openai:v0.11.0" and d, message="the image restored")
    env = {e.name for e in repaired.spec.template.spec.containers[0].env}
    assert "EXTRA" not in env and "HF_TOKEN" in env
    assert repaired.spec.replicas == 5  # the replica count belongs to the autoscaler

    # In manual mode spec.replicas owns the count: a hand scale is undone.
    cluster.patch_service("team-d", "phi", {"spec": {"autoscaling": {"enabled": False}, "replicas": 2}})
    wait_for(lambda: _deployment(cluster, "team-d", "phi").spec.replicas == 2, message="spec.replicas applied")
    cluster.apps.patch_namespaced_deployment_scale("phi", "team-d", {"spec": {"replicas": 4}})
    wait_for(lambda: _deployment(cluster, "team-d", "phi").spec.replicas == 2, message="hand scale undone")


def test_deleting_the_service_finishes_and_removes_everything(cluster):
    cluster.create_service("team-e", "gemma", SPEC)
    wait_for(lambda: _deployment(cluster, "team-e", "gemma"), message="the Deployment")
    wait_for(lambda: cluster.get_service("team-e", "gemma").get("status", {}).get("endpoint"), message="status")
    # No per-object daemon, so no finalizer: deletion never waits on the operator.
    assert "tokenscale.io/finalizer" not in (cluster.get_service("team-e", "gemma")["metadata"].get("finalizers")
                                             or [])
    cluster.delete_service("team-e", "gemma")

    def gone():
        try:
            cluster.get_service("team-e", "gemma")
        except Exception as error:  # kubernetes ApiException 404
            return getattr(error, "status", None) == 404
        return False

    wait_for(gone, message="the InferenceService to be deleted (finalizers removed)")
    assert not cluster.emulator.live_objects("apps", "v1", "deployments", "team-e")
    assert not cluster.emulator.live_objects("", "v1", "services", "team-e")


def test_invalid_spec_degrades_without_a_retry_loop_and_others_are_served(cluster):
    invalid = {**SPEC, "engine": {"type": "sglang"}, "resources": {"gpus": 0}}  # sglang needs a GPU
    cluster.create_service("team-f", "broken", invalid)
    degraded = wait_for(lambda: cluster.condition("team-f", "broken", "Degraded"), message="Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidSpec"
    assert "resources.gpus" in degraded["message"] or "need resources.gpus" in degraded["message"]
    assert cluster.get_service("team-f", "broken")["status"]["phase"] == "Degraded"
    warnings = wait_for(lambda: [e for e in cluster.events_for("team-f", "broken") if e.type == "Warning"],
                        message="a Warning event")
    assert warnings[0].reason == "InvalidSpec"
    assert not cluster.emulator.live_objects("apps", "v1", "deployments", "team-f")

    cluster.create_service("team-g", "healthy", SPEC)
    wait_for(lambda: _deployment(cluster, "team-g", "healthy"), message="the other service's Deployment")
    assert wait_for(lambda: _settled(cluster, 1.5), message="no hot retry loop")
    assert cluster.get_service("team-f", "broken")["spec"] == invalid  # the operator never writes spec

    # Fixing the spec realises it and clears Degraded.
    cluster.patch_service("team-f", "broken", {"spec": {"resources": {"gpus": 1}}})
    wait_for(lambda: _deployment(cluster, "team-f", "broken"), message="the fixed service's Deployment")
    wait_for(lambda: cluster.condition("team-f", "broken", "Degraded")["status"] == "False",
             message="Degraded cleared")


def test_a_deployment_of_the_same_name_that_is_not_ours_is_left_alone(cluster):
    foreign = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "taken"}, "spec": {
        "selector": {"matchLabels": {"app": "mine"}},
        "template": {"metadata": {"labels": {"app": "mine"}}, "spec": {"containers": [{"name": "c", "image": "mine:1"}]}}}}
    cluster.apps.create_namespaced_deployment("team-h", foreign)
    cluster.create_service("team-h", "taken", SPEC)
    degraded = wait_for(lambda: (c := cluster.condition("team-h", "taken", "Degraded")) and c["status"] == "True"
                        and c, message="Degraded")
    assert degraded["reason"] == "NameConflict" and "not managed by" in degraded["message"]
    wait_for(lambda: [e for e in cluster.events_for("team-h", "taken") if e.reason == "NameConflict"],
             message="a NameConflict warning")
    untouched = _deployment(cluster, "team-h", "taken")
    assert untouched.spec.template.spec.containers[0].image == "mine:1" and not untouched.metadata.owner_references


def test_children_follow_the_spec_pdb_and_pod_monitor_come_and_go(cluster):
    cluster.create_service("team-i", "flex", {**SPEC, "replicas": 3, "monitoring": {"podMonitor": True}})
    pdb = wait_for(lambda: cluster.policy.read_namespaced_pod_disruption_budget("flex", "team-i"), message="PDB")
    assert pdb.spec.selector.match_labels["tokenscale.io/service"] == "flex"
    monitors = wait_for(lambda: cluster.emulator.live_objects("monitoring.coreos.com", "v1", "podmonitors", "team-i"),
                        message="the PodMonitor")
    endpoint = monitors[0]["spec"]["podMetricsEndpoints"][0]
    assert {r["targetLabel"] for r in endpoint["relabelings"]} >= {"tokenscale_io_service", "namespace"}
    cluster.patch_service("team-i", "flex", {"spec": {"replicas": 1, "monitoring": {"podMonitor": False}}})
    wait_for(lambda: not cluster.emulator.live_objects("policy", "v1", "poddisruptionbudgets", "team-i"),
             message="the PDB removed at one replica")
    wait_for(lambda: not cluster.emulator.live_objects("monitoring.coreos.com", "v1", "podmonitors", "team-i"),
             message="the PodMonitor removed")
    assert _deployment(cluster, "team-i", "flex").spec.replicas == 1


def test_without_the_prometheus_operator_the_service_is_served_and_a_warning_says_why(cluster):
    key = "monitoring.coreos.com/v1/podmonitors"
    info = cluster.emulator.resources[key]
    del cluster.emulator.resources[key]  # as in a cluster without the Prometheus Operator's CRDs
    try:
        cluster.create_service("team-j", "plain", {**SPEC, "monitoring": {"podMonitor": True}})
        wait_for(lambda: _deployment(cluster, "team-j", "plain"), message="the Deployment")
        warning = wait_for(lambda: [e for e in cluster.events_for("team-j", "plain")
                                    if e.reason == "MonitoringUnavailable"], message="the warning")
        assert warning[0].type == "Warning" and "monitoring.coreos.com/v1" in warning[0].message
        assert cluster.condition("team-j", "plain", "Degraded")["status"] == "False"
    finally:
        cluster.emulator.resources[key] = info


def test_retries_of_a_conflict_do_not_repeat_the_warning(cluster):
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "twice"},
               "spec": {"ports": [{"port": 80}], "selector": {"app": "other"}}}
    cluster.core.create_namespaced_service("team-k", foreign)
    cluster.create_service("team-k", "twice", SPEC)
    wait_for(lambda: (c := cluster.condition("team-k", "twice", "Degraded")) and c["reason"] == "NameConflict",
             message="NameConflict")
    # A spec change retries at once (a new cause); the condition is unchanged, so no new event.
    cluster.patch_service("team-k", "twice", {"metadata": {"labels": {"touched": "yes"}}})
    wait_for(lambda: _settled(cluster, 1.0), message="the retry to settle")
    warnings = [e for e in cluster.events_for("team-k", "twice") if e.reason == "NameConflict"]
    assert len(warnings) == 1
