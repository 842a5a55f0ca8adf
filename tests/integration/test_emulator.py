"""The API emulator behaves like an API server where the operator can tell (real HTTP, real client)."""

from __future__ import annotations

import threading
import time

import kubernetes
import pytest

from tokenscale.api import GROUP, PLURAL, VERSION

NS = "emu"


def deployment(name: str, labels: dict[str, str] | None = None, owner: dict | None = None) -> dict:
    labels = labels or {"app": name}
    meta: dict = {"name": name, "labels": labels}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}}


def test_create_answers_201_with_identity_and_versions(cluster):
    response = cluster.apps.create_namespaced_deployment(NS, deployment("ident"), _preload_content=False)
    assert response.status == 201
    created = cluster.apps.read_namespaced_deployment("ident", NS)
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.generation == 1 and created.spec.replicas == 1
    first = int(created.metadata.resource_version)

    status = cluster.apps.patch_namespaced_deployment_status("ident", NS, {"status": {"readyReplicas": 1}})
    assert int(status.metadata.resource_version) > first and status.metadata.generation == 1
    labelled = cluster.apps.patch_namespaced_deployment("ident", NS, {"metadata": {"labels": {"x": "y"}}})
    assert labelled.metadata.generation == 1  # metadata is not spec
    changed = cluster.apps.patch_namespaced_deployment("ident", NS, {"spec": {"replicas": 3}})
    assert changed.metadata.generation == 2
    again = cluster.apps.patch_namespaced_deployment("ident", NS, {"spec": {"replicas": 3}})
    assert again.metadata.resource_version == changed.metadata.resource_version  # a no-op writes nothing


def test_status_and_main_resource_are_separate(cluster):
    cluster.apps.create_namespaced_deployment(NS, deployment("split"))
    cluster.apps.patch_namespaced_deployment("split", NS, {"status": {"replicas": 9}})
    assert cluster.apps.read_namespaced_deployment("split", NS).status is None
    cluster.apps.patch_namespaced_deployment_status("split", NS, {"status": {"replicas": 2},
                                                                   "spec": {"replicas": 7}})
    live = cluster.apps.read_namespaced_deployment("split", NS)
    assert live.status.replicas == 2 and live.spec.replicas == 1


def test_generate_name_list_kind_and_core_group_version(cluster):
    body = {"metadata": {"generateName": "ev-"}, "involvedObject": {"kind": "X", "name": "y", "namespace": NS},
            "reason": "R", "message": "m", "type": "Normal"}
    names = {cluster.core.create_namespaced_event(NS, body).metadata.name for _ in range(3)}
    assert len(names) == 3 and all(name.startswith("ev-") for name in names)
    listing = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    assert listing["kind"] == "InferenceServiceList" and listing["apiVersion"] == f"{GROUP}/{VERSION}"
    assert int(listing["metadata"]["resourceVersion"]) > 0
    assert cluster.core.get_api_resources().group_version == "v1"
    assert NS in {ns.metadata.name for ns in cluster.core.list_namespace().items}
    cluster.core.create_namespace({"metadata": {"name": "explicit"}})
    assert cluster.core.read_namespace("explicit").status.phase == "Active"


def test_scale_subresource_for_deployments_and_inference_services(cluster):
    cluster.apps.create_namespaced_deployment(NS, deployment("scaled", {"app": "scaled", "tier": "x"}))
    scale = cluster.apps.read_namespaced_deployment_scale("scaled", NS)
    assert (scale.kind, scale.spec.replicas, scale.status.selector) == ("Scale", 1, "app=scaled,tier=x")
    cluster.apps.patch_namespaced_deployment_scale("scaled", NS, {"spec": {"replicas": 4}})
    assert cluster.apps.read_namespaced_deployment("scaled", NS).spec.replicas == 4

    cluster.create_service(NS, "scalable", {"model": {"source": "m"}, "replicas": 1})
    cluster.custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "scalable",
                                                         {"status": {"replicas": 1, "selector": "a=b"}})
    scale = cluster.custom.get_namespaced_custom_object_scale(GROUP, VERSION, NS, PLURAL, "scalable")
    assert scale["apiVersion"] == "autoscaling/v1" and scale["status"] == {"replicas": 1, "selector": "a=b"}
    cluster.custom.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, PLURAL, "scalable",
                                                        {"spec": {"replicas": 3}})
    assert cluster.get_service(NS, "scalable")["spec"]["replicas"] == 3


def test_label_and_field_selectors(cluster):
    for name, tier in (("sel-a", "gpu"), ("sel-b", "cpu"), ("sel-c", "gpu")):
        cluster.apps.create_namespaced_deployment(NS, deployment(name, {"app": name, "pool": tier}))

    def names(**kwargs):
        return sorted(d.metadata.name for d in cluster.apps.list_namespaced_deployment(NS, **kwargs).items)

    assert names(label_selector="pool=gpu") == ["sel-a", "sel-c"]
    assert names(label_selector="pool!=gpu,pool") == ["sel-b"]
    assert names(label_selector="pool in (cpu, gpu),app notin (sel-a)") == ["sel-b", "sel-c"]
    assert names(field_selector="metadata.name=sel-b") == ["sel-b"]
    with pytest.raises(kubernetes.client.ApiException) as error:
        names(label_selector="pool in gpu)")
    assert error.value.status == 400


def test_watch_resumes_from_a_resource_version_and_honours_timeouts(cluster):
    cluster.apps.create_namespaced_deployment(NS, deployment("watched", {"app": "watched"}))
    since = cluster.apps.list_namespaced_deployment(NS).metadata.resource_version
    cluster.apps.patch_namespaced_deployment("watched", NS, {"spec": {"replicas": 2}})  # before the watch

    def later():
        time.sleep(0.3)
        cluster.apps.patch_namespaced_deployment("watched", NS, {"spec": {"replicas": 3}})

    threading.Thread(target=later).start()
    started = time.monotonic()
    seen = [(e["type"], e["object"].spec.replicas) for e in kubernetes.watch.Watch().stream(
        cluster.apps.list_namespaced_deployment, NS, label_selector="app=watched", resource_version=since,
        timeout_seconds=1)]
    assert seen == [("MODIFIED", 2), ("MODIFIED", 3)]
    assert 0.9 < time.monotonic() - started < 5


def test_replace_conflicts_on_a_stale_resource_version_and_json_patch_works(cluster):
    cluster.apps.create_namespaced_deployment(NS, deployment("replaced"))
    live = cluster.apps.read_namespaced_deployment("replaced", NS)
    live.spec.replicas = 2
    cluster.apps.replace_namespaced_deployment("replaced", NS, live)
    with pytest.raises(kubernetes.client.ApiException) as error:
        cluster.apps.replace_namespaced_deployment("replaced", NS, live)  # stale resourceVersion
    assert error.value.status == 409
    patched = cluster.apps.patch_namespaced_deployment(
        "replaced", NS, [{"op": "replace", "path": "/spec/replicas", "value": 5}])
    assert patched.spec.replicas == 5


def test_finalizers_block_deletion_and_owners_collect_dependents(cluster):
    owner = cluster.create_service(NS, "owner", {"model": {"source": "m"}})
    cluster.patch_service(NS, "owner", {"metadata": {"finalizers": ["example.com/hold"]}})
    reference = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService", "name": "owner",
                 "uid": owner["metadata"]["uid"], "controller": True}
    cluster.apps.create_namespaced_deployment(NS, deployment("dependent", owner=reference))
    cluster.delete_service(NS, "owner")
    held = cluster.get_service(NS, "owner")
    assert held["metadata"]["deletionTimestamp"]
    assert cluster.apps.read_namespaced_deployment("dependent", NS)  # the owner still exists
    cluster.patch_service(NS, "owner", {"metadata": {"finalizers": None}})
    with pytest.raises(kubernetes.client.ApiException) as error:
        cluster.get_service(NS, "owner")
    assert error.value.status == 404
    with pytest.raises(kubernetes.client.ApiException):
        cluster.apps.read_namespaced_deployment("dependent", NS)


def test_every_request_is_logged_with_its_rbac_verb(cluster):
    cluster.apps.create_namespaced_deployment(NS, deployment("logged"))
    cluster.apps.read_namespaced_deployment("logged", NS)
    cluster.apps.patch_namespaced_deployment_scale("logged", NS, {"spec": {"replicas": 2}})
    cluster.apps.delete_namespaced_deployment("logged", NS)
    records = [r for r in cluster.emulator.request_log if r.resource == "deployments" and r.name in ("logged", None)]
    verbs = [(r.verb, r.subresource, r.status) for r in records[-4:]]
    assert verbs == [("create", None, 201), ("get", None, 200), ("patch", "scale", 200), ("delete", None, 200)]
    assert records[-1].group == "apps" and records[-1].namespace == NS


def test_builtin_kinds_refuse_long_label_values_and_bad_names_with_causes(cluster):
    """kube-apiserver's validation of built-in kinds: label values of at most 63 characters, DNS names;
    a 422 whose message and details.causes name each field (the CRD's objects are not checked so)."""
    import json

    long_name = "a" * 70
    with pytest.raises(kubernetes.client.ApiException) as refused:
        cluster.apps.create_namespaced_deployment(NS, deployment(long_name, {"app": long_name}))
    assert refused.value.status == 422
    body = json.loads(refused.value.body)
    assert body["reason"] == "Invalid" and body["details"]["kind"] == "Deployment"
    assert body["message"].startswith(f'Deployment.apps "{long_name}" is invalid: [metadata.labels: Invalid value: '
                                      f'"{long_name}": must be no more than 63 characters, ')
    assert [c["field"] for c in body["details"]["causes"]] == [
        "metadata.labels", "spec.selector.matchLabels", "spec.template.labels"]
    assert {c["reason"] for c in body["details"]["causes"]} == {"FieldValueInvalid"}
    with pytest.raises(kubernetes.client.ApiException) as bad_service:
        cluster.core.create_namespaced_service(NS, {"metadata": {"name": "9lives"}, "spec": {"ports": [{"port": 1}]}})
    cause = json.loads(bad_service.value.body)["details"]["causes"][0]
    assert cause["field"] == "metadata.name" and "DNS-1035 label" in cause["message"]
    # An update is checked as well, and a valid object still goes through.
    cluster.apps.create_namespaced_deployment(NS, deployment("fine"))
    with pytest.raises(kubernetes.client.ApiException) as relabelled:
        cluster.apps.patch_namespaced_deployment("fine", NS, {"metadata": {"labels": {"x": "-bad-"}}})
    assert relabelled.value.status == 422 and "a valid label must be" in relabelled.value.body


def test_latency_and_faults(cluster):
    """Every request waits the configured latency (a real server answers in tens of ms); a fault
    refuses matching requests as the real server would (here: a Service IP range that ran out)."""
    from tokenscale.local.emulator import Fault

    emulator = cluster.emulator
    emulator.latency, emulator.jitter = 0.05, 0.01
    try:
        started = time.perf_counter()
        cluster.core.list_namespaced_service(NS)
        assert time.perf_counter() - started >= 0.05
    finally:
        emulator.latency = emulator.jitter = 0.0
    emulator.faults[("create", "services")] = Fault(500, "InternalError", "Internal error occurred: failed to "
                                                    "allocate a serviceIP: range is full", times=1)
    with pytest.raises(kubernetes.client.ApiException) as refused:
        cluster.core.create_namespaced_service(NS, {"metadata": {"name": "full"}, "spec": {"ports": [{"port": 1}]}})
    assert refused.value.status == 500 and "range is full" in refused.value.body
    cluster.core.create_namespaced_service(NS, {"metadata": {"name": "full"}, "spec": {"ports": [{"port": 1}]}})
