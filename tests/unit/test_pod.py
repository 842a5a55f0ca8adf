"""The serving pod a platform team needs (spec.pod, env valueFrom/envFrom, volumes, spreading):
validated by the CRD and the model alike, carried to a Deployment Kubernetes accepts, and kept
under drift repair without fighting the API server's own defaults."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from tests.support import crdcheck
from tokenscale import desired
from tokenscale.api import EngineType, SpecError, parse_spec
from tokenscale.api.crd import crd
from tokenscale.desired.drift import MANAGED_ANNOTATIONS, differences, overlay
from tokenscale.engines import adapter_for

K8S_VERSION = "1.33"

PLATFORM: dict[str, Any] = {
    "model": {"source": "org/model"},
    "pod": {
        "labels": {"team": "search", "cost-center": "ml-42"},
        "annotations": {"example.com/owner": "search-team", "sidecar.istio.io/inject": "false"},
        "serviceAccountName": "llm-reader",
        "imagePullSecrets": [{"name": "registry-creds"}],
        "terminationGracePeriodSeconds": 600,
        "volumes": [
            {"name": "chat-templates", "configMap": {"name": "templates", "defaultMode": 0o444}},
            {"name": "certs", "secret": {"secretName": "corp-ca"}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}},
            {"name": "podinfo", "downwardAPI": {"items": [{"path": "labels",
                                                           "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        ],
    },
    "engine": {
        "env": [
            {"name": "LOG_LEVEL", "value": "debug"},
            {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "api-keys", "key": "openai"}}},
            {"name": "REGION", "valueFrom": {"configMapKeyRef": {"name": "cluster-info", "key": "region",
                                                                 "optional": True}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
            {"name": "MEMORY_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                                     "divisor": "1Mi"}}},
        ],
        "envFrom": [{"secretRef": {"name": "cloud-credentials"}},
                    {"configMapRef": {"name": "engine-tuning", "optional": True}, "prefix": "TUNING_"}],
        "volumeMounts": [
            {"name": "chat-templates", "mountPath": "/etc/templates", "readOnly": True},
            {"name": "certs", "mountPath": "/etc/ssl/corp", "readOnly": True, "subPath": "ca"},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "podinfo", "mountPath": "/etc/podinfo"},
        ],
    },
    "resources": {"gpus": 1, "memory": "64Gi"},
    "scheduling": {
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
            {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"team": "search"}}, "matchLabelKeys": ["pod-template-hash"],
             "minDomains": 2, "nodeTaintsPolicy": "Honor"},
        ],
    },
}


def platform_spec(engine: str = "vllm", **pod: Any) -> dict[str, Any]:
    raw = copy.deepcopy(PLATFORM)
    raw["engine"]["type"] = engine
    raw["pod"].update(pod)
    return raw


def deployment_of(raw: dict[str, Any], name: str = "chat") -> dict[str, Any]:
    return desired.children(name, "serving", parse_spec(raw), current_replicas=None).deployment


def resource(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "tokenscale.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "chat", "namespace": "serving"}, "spec": spec}


# --- the API: accepted in full, refused with the field named -------------------------------------


def test_the_full_platform_spec_is_valid_for_the_crd_and_the_model():
    assert crdcheck.validate(resource(PLATFORM), crd()) == []
    spec = parse_spec(PLATFORM)
    assert spec.pod.service_account_name == "llm-reader"
    assert spec.engine.env[1].value_from.secret_key_ref.key == "openai"


def _set(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = copy.deepcopy(base or PLATFORM)
    node = spec
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[leaf] = value
    return spec


# (id, the invalid spec, a fragment both the CRD and the model must name)
INVALID = [
    ("operator-service-label", _set("pod.labels", {"tokenscale.io/service": "other"}), "labels"),
    ("operator-selector-label", _set("pod.labels", {"app.kubernetes.io/instance": "x"}), "labels"),
    ("label-value-too-long", _set("pod.labels", {"team": "x" * 64}), "labels"),
    ("label-value-bad-characters", _set("pod.labels", {"team": "a b"}), "labels"),
    ("unknown-pod-field", _set("pod.hostNetwork", True), "hostNetwork"),
    ("operator-annotation-record", _set("pod.annotations", {"tokenscale.io/pod-annotations": "a"}), "annotations"),
    ("bad-service-account", _set("pod.serviceAccountName", "Not_A_Name"), "serviceAccountName"),
    ("bad-pull-secret", _set("pod.imagePullSecrets", [{"name": "UPPER"}]), "name"),
    ("pull-secret-unknown-field", _set("pod.imagePullSecrets", [{"name": "a", "namespace": "b"}]), "namespace"),
    ("grace-below-the-drain", _set("pod.terminationGracePeriodSeconds", 5), "terminationGracePeriodSeconds"),
    ("duplicate-volume", _set("pod.volumes", [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]),
     "volumes"),
    ("volume-named-like-the-cache", _set("pod.volumes", [{"name": "model-cache", "emptyDir": {}}]), "volumes"),
    ("volume-named-like-shm", _set("pod.volumes", [{"name": "dshm", "emptyDir": {}}]), "volumes"),
    ("volume-bad-name", _set("pod.volumes", [{"name": "Data_1", "emptyDir": {}}]), "name"),
    ("volume-two-sources", _set("pod.volumes", [{"name": "a", "emptyDir": {}, "secret": {"secretName": "s"}}]),
     "exactly one source"),
    ("volume-no-source", _set("pod.volumes", [{"name": "a"}]), "exactly one source"),
    ("volume-unknown-source", _set("pod.volumes", [{"name": "a", "flocker": {}}]), "flocker"),
    ("mount-of-no-volume", _set("engine.volumeMounts", [{"name": "nowhere", "mountPath": "/x"}]),
     "pod.volumes"),
    ("mount-over-dev-shm", _set("engine.volumeMounts.0.mountPath", "/dev/shm"), "volumeMounts"),
    ("mount-over-the-model-cache", _set("engine.volumeMounts.0.mountPath", "/models"), "volumeMounts"),
    ("mount-path-twice", _set("engine.volumeMounts.1.mountPath", "/etc/templates"), "volumeMounts"),
    ("mount-path-relative", _set("engine.volumeMounts.0.mountPath", "etc/templates"), "mountPath"),
    ("mount-path-trailing-slash", _set("engine.volumeMounts.0.mountPath", "/etc/templates/"), "mountPath"),
    ("value-and-value-from", _set("engine.env.1.value", "literal"), "valueFrom"),
    ("value-from-two-sources", _set("engine.env.1.valueFrom.fieldRef", {"fieldPath": "metadata.name"}),
     "exactly one"),
    ("value-from-empty", _set("engine.env.1.valueFrom", {}), "exactly one"),
    ("field-ref-unknown-path", _set("engine.env.3.valueFrom.fieldRef.fieldPath", "spec.containers"),
     "fieldPath"),
    ("resource-field-unknown", _set("engine.env.5.valueFrom.resourceFieldRef.resource", "limits.gpu"),
     "resource"),
    ("secret-key-ref-without-key", _set("engine.env.1.valueFrom.secretKeyRef", {"name": "s"}), "key"),
    ("env-from-neither", _set("engine.envFrom", [{"prefix": "X_"}]), "exactly one"),
    ("env-from-both", _set("engine.envFrom", [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]),
     "exactly one"),
    ("spread-zero-skew", _set("scheduling.topologySpreadConstraints.0.maxSkew", 0), "maxSkew"),
    ("spread-unknown-policy", _set("scheduling.topologySpreadConstraints.0.whenUnsatisfiable", "Maybe"),
     "whenUnsatisfiable"),
    ("spread-without-key", _set("scheduling.topologySpreadConstraints",
                                [{"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}]), "topologyKey"),
]


@pytest.mark.parametrize(("case", "spec", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_pod_settings_are_refused_by_crd_and_model(case, spec, field):
    crd_errors = crdcheck.validate(resource(spec), crd())
    assert crd_errors, f"{case}: the CRD accepted it"
    assert any(field in e for e in crd_errors), f"{case}: CRD errors do not name {field}: {crd_errors}"
    with pytest.raises(SpecError) as raised:
        parse_spec(spec)
    assert field in str(raised.value), f"{case}: model error does not name {field}: {raised.value}"


def test_the_operators_labels_are_refused_not_overridden():
    """Rejected, not silently overwritten: a user label that moved pods out of the selector, or
    into another service's, would break serving and metrics without a word."""
    with pytest.raises(SpecError) as raised:
        parse_spec(_set("pod.labels", {"tokenscale.io/engine": "vllm", "team": "a"}))
    assert "spec.pod.labels" in str(raised.value) and "tokenscale.io/engine" in str(raised.value)
    errors = crdcheck.validate(resource(_set("pod.labels", {"app.kubernetes.io/managed-by": "helm"})), crd())
    assert any("spec.pod.labels" in e and "operator's labels" in e for e in errors), errors


def test_label_and_annotation_keys_are_checked_by_the_model():
    for key in ("-bad", "a/b/c", "UPPER_PREFIX.com/x", "x" * 64):
        with pytest.raises(SpecError, match="spec.pod.labels"):
            parse_spec(_set("pod.labels", {key: "v"}))
        with pytest.raises(SpecError, match="spec.pod.annotations"):
            parse_spec(_set("pod.annotations", {key: "v"}))
    parse_spec(_set("pod.labels", {"example.com/tier": "gold", "plain": ""}))


def test_new_rules_hold_for_the_crd_defaults():
    """The API server checks each default literal against the rules of its node and below when the
    CRD is created, as written (no nested defaulting): spec.pod's and spec.engine's must pass."""
    spec = crdcheck.version_schema(crd())["properties"]["spec"]["properties"]
    for section in ("pod", "engine", "scheduling"):
        assert crdcheck.default_errors(spec[section]) == [], section
    grace = spec["pod"]["properties"]["terminationGracePeriodSeconds"]
    assert grace["minimum"] <= spec["pod"]["default"]["terminationGracePeriodSeconds"] == grace["default"]
    assert crdcheck.validate(resource({"model": {"source": "m"}}), crd()) == []


# --- the Deployment -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", [engine.value for engine in EngineType])
def test_every_engine_carries_the_pod_settings_into_a_valid_deployment(engine):
    deployment = deployment_of(platform_spec(engine))
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    template = deployment["spec"]["template"]
    pod, container = template["spec"], template["spec"]["containers"][0]
    assert template["metadata"]["labels"]["team"] == "search"
    assert template["metadata"]["labels"]["tokenscale.io/service"] == "chat"  # ours stay
    assert template["metadata"]["annotations"]["example.com/owner"] == "search-team"
    assert pod["serviceAccountName"] == "llm-reader"
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod["terminationGracePeriodSeconds"] == 600
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["chat-templates"] == {"name": "chat-templates",
                                         "configMap": {"name": "templates", "defaultMode": 0o444}}
    assert {"dshm", "model-cache", "certs", "scratch"} <= set(volumes)
    assert volumes["podinfo"]["downwardAPI"]["items"][0]["path"] == "labels"  # the core spelling
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/etc/ssl/corp"] == {"name": "certs", "mountPath": "/etc/ssl/corp", "subPath": "ca",
                                       "readOnly": True}
    env = {item["name"]: item for item in container["env"]}
    assert env["OPENAI_API_KEY"] == {"name": "OPENAI_API_KEY",
                                     "valueFrom": {"secretKeyRef": {"name": "api-keys", "key": "openai"}}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MEMORY_MI"]["valueFrom"] == {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}
    assert env["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "debug"}
    assert container["envFrom"] == [{"secretRef": {"name": "cloud-credentials"}},
                                    {"prefix": "TUNING_", "configMapRef": {"name": "engine-tuning",
                                                                           "optional": True}}]
    spread = pod["topologySpreadConstraints"]
    assert spread[0]["labelSelector"] == {"matchLabels": desired.selector_labels("chat")}  # its own pods
    assert spread[1]["labelSelector"] == {"matchLabels": {"team": "search"}}
    assert spread[1]["matchLabelKeys"] == ["pod-template-hash"] and spread[1]["nodeTaintsPolicy"] == "Honor"


def test_a_minimal_spec_sets_none_of_the_optional_pod_fields():
    deployment = deployment_of({"model": {"source": "m"}})
    pod = deployment["spec"]["template"]["spec"]
    for field in ("serviceAccountName", "imagePullSecrets", "topologySpreadConstraints"):
        assert field not in pod
    assert "annotations" not in deployment["spec"]["template"]["metadata"]
    assert "envFrom" not in pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] == 120


def test_an_empty_env_value_is_written_as_the_api_server_stores_it():
    env = deployment_of(_set("engine.env", [{"name": "EMPTY", "value": ""}, {"name": "BARE"}]))[
        "spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "EMPTY"} in env and {"name": "BARE"} in env


@pytest.mark.parametrize("grace", [30, 120, 600, 3600])
def test_the_builtin_servers_drain_follows_the_grace_period(grace):
    """The kubelet sends SIGTERM after the preStop sleep and SIGKILL at the grace period: the
    server's --drain-timeout must end before that, whatever the user sets."""
    raw = {"model": {"source": "m"}, "resources": {"gpus": 0}, "pod": {"terminationGracePeriodSeconds": grace}}
    deployment = deployment_of(raw)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(container["args"][container["args"].index("--drain-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] == grace
    assert 0 < drain and pre_stop + drain < grace
    assert drain == grace - pre_stop - 10


def test_every_engines_pre_stop_fits_in_the_shortest_grace_period():
    raw = {"model": {"source": "m"}, "pod": {"terminationGracePeriodSeconds": 30}}
    for engine in EngineType:
        spec = parse_spec({**raw, "engine": {"type": engine.value}})
        adapter = adapter_for(engine)
        assert adapter.shutdown_seconds(spec) > 0
        assert adapter.drain_seconds < adapter.termination_grace_seconds(spec)


# --- drift: server defaults are not drift, removals are ---------------------------------------------


def _served(deployment: dict[str, Any]) -> dict[str, Any]:
    """What a real API server stores for this Deployment: defaults filled in, zero values dropped,
    quantities canonical, serviceAccountName mirrored into the deprecated serviceAccount."""
    live = copy.deepcopy(deployment)
    live["metadata"].update(uid="u", resourceVersion="9", generation=2)
    pod = live["spec"]["template"]["spec"]
    pod.update(restartPolicy="Always", dnsPolicy="ClusterFirst", schedulerName="default-scheduler")
    if "serviceAccountName" in pod:
        pod["serviceAccount"] = pod["serviceAccountName"]
    for volume in pod["volumes"]:
        for source in ("configMap", "secret"):
            if source in volume:
                volume[source].setdefault("defaultMode", 420)
    for container in pod["containers"]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        for item in container.get("env", []):
            ref = item.get("valueFrom", {})
            if "fieldRef" in ref:
                ref["fieldRef"].setdefault("apiVersion", "v1")
            if "resourceFieldRef" in ref:
                divisor = ref["resourceFieldRef"].get("divisor", "0")
                ref["resourceFieldRef"]["divisor"] = {"1000m": "1"}.get(divisor, divisor)
            if item.get("value") == "":
                del item["value"]
        for mount in container["volumeMounts"]:
            if mount.get("readOnly") is False:
                del mount["readOnly"]
    return live


def _wanted(deployment: dict[str, Any]) -> dict[str, Any]:
    """What reconcile.apply_child compares with the live object."""
    return {"metadata": {"labels": deployment["metadata"]["labels"]}, "spec": deployment["spec"]}


def test_api_server_defaults_of_the_new_fields_are_not_drift():
    raw = _set("engine.env", [*PLATFORM["engine"]["env"], {"name": "E", "value": ""},
                              {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu",
                                                                                 "divisor": "1000m"}}}])
    raw["engine"]["volumeMounts"][2]["readOnly"] = False
    desired = deployment_of(raw)
    live = _served(desired)
    assert live["spec"]["template"]["spec"]["serviceAccount"] == "llm-reader"
    assert differences(_wanted(desired), live) == []


def test_a_rollout_restart_annotation_is_left_alone():
    desired = deployment_of(PLATFORM)
    live = _served(desired)
    live["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "2026-12-02T06:00:00Z"
    assert differences(_wanted(desired), live) == []
    bare = deployment_of({"model": {"source": "m"}})
    live = _served(bare)
    live["spec"]["template"]["metadata"]["annotations"] = {"kubectl.kubernetes.io/restartedAt": "now"}
    assert differences(_wanted(bare), live) == []
    assert overlay(live["spec"], bare["spec"])["template"]["metadata"]["annotations"] == {
        "kubectl.kubernetes.io/restartedAt": "now"}


@pytest.mark.parametrize(("removed", "path"), [
    ("serviceAccountName", ".spec.template.spec.serviceAccountName"),
    ("imagePullSecrets", ".spec.template.spec.imagePullSecrets"),
    ("labels", ".spec.template.metadata.labels.team"),
    ("annotations", ".spec.template.metadata.annotations.example.com/owner"),
])
def test_a_setting_removed_from_the_spec_is_removed_from_the_deployment(removed, path):
    before = deployment_of(PLATFORM)
    live = _served(before)
    live["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "now"
    raw = copy.deepcopy(PLATFORM)
    del raw["pod"][removed]
    after = deployment_of(raw)
    assert path in differences(_wanted(after), live)
    repaired = {**live, "spec": overlay(live["spec"], after["spec"])}  # as reconcile.apply_child calls it
    assert differences(_wanted(after), repaired) == []
    template = repaired["spec"]["template"]
    assert template["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] == "now"
    assert template["spec"]["restartPolicy"] == "Always"  # server fields kept
    if removed == "serviceAccountName":  # else the server would read the name back from it
        assert "serviceAccount" not in template["spec"] and "serviceAccountName" not in template["spec"]
    if removed == "annotations":
        assert MANAGED_ANNOTATIONS not in template["metadata"]["annotations"]
    if removed == "labels":
        assert "team" not in template["metadata"]["labels"]
        assert template["metadata"]["labels"]["tokenscale.io/service"] == "chat"


def test_removed_scheduling_fields_and_hand_added_pod_labels_are_drift():
    raw = copy.deepcopy(PLATFORM)
    raw["scheduling"] = {"affinity": {"nodeAffinity": {}}, **raw["scheduling"]}
    live = _served(deployment_of(raw))
    after = deployment_of(PLATFORM | {"scheduling": {}})
    found = differences(_wanted(after), live)
    assert ".spec.template.spec.topologySpreadConstraints" in found
    assert ".spec.template.spec.affinity" in found
    live = _served(deployment_of(PLATFORM))
    live["spec"]["template"]["metadata"]["labels"]["hand-made"] = "1"
    assert differences(_wanted(deployment_of(PLATFORM)), live) == [".spec.template.metadata.labels.hand-made"]


def test_zero_values_in_a_status_patch_are_still_written():
    """A custom resource's status is stored verbatim: a 0 or "" not there yet must be written."""
    assert differences({"recommendedReplicas": 0, "phase": ""}, {}) == [".recommendedReplicas", ".phase"]
    assert differences({"spec": {"x": 0, "y": "", "z": False}}, {"spec": {}}) == []


def test_hand_edits_of_the_pod_settings_are_drift_and_the_repair_restores_them():
    desired = deployment_of(PLATFORM)
    live = _served(desired)
    template = live["spec"]["template"]
    template["spec"]["serviceAccountName"] = template["spec"]["serviceAccount"] = "default"
    del template["spec"]["imagePullSecrets"]
    del template["metadata"]["annotations"]["example.com/owner"]
    template["spec"]["volumes"].append({"name": "extra", "emptyDir": {}})
    template["spec"]["containers"][0]["env"][3]["valueFrom"]["secretKeyRef"]["name"] = "stolen"
    template["spec"]["topologySpreadConstraints"][0]["maxSkew"] = 5
    found = differences(_wanted(desired), live)
    assert set(found) == {
        ".spec.template.spec.serviceAccountName", ".spec.template.spec.imagePullSecrets",
        ".spec.template.metadata.annotations.example.com/owner", ".spec.template.spec.volumes",
        ".spec.template.spec.containers[0].env[3].valueFrom.secretKeyRef.name",
        ".spec.template.spec.topologySpreadConstraints[0].maxSkew"}, found
    repaired = {**live, "spec": overlay(live["spec"], desired["spec"])}
    assert differences(_wanted(desired), repaired) == []
