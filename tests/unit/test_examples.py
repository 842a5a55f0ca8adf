"""Each file in manifests/examples applies to an empty cluster as it is written.

A fresh cluster has the CRD (installed first) and nothing of the user's: three of the four examples
once needed a namespace, a PersistentVolumeClaim or a PriorityClass that no fresh cluster has, and the
real API server (or, later, the scheduler and the ReplicaSet controller) refused them. Here every
object a file's pods refer to must be created in the same file, before its user, or be one the
cluster starts with; a Secret may instead be named in the file's leading comment with the command
that creates it. The references are read from the pods the operator would create (the operator's own
builder), so new pod fields are covered as they come.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO
from tests.support import crdcheck
from tokenscale.api import parse_spec
from tokenscale.api.crd import crd
from tokenscale.desired import deployment
from tokenscale.engines.builtin import BuiltinAdapter

EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
KUBERNETES_VERSION = "1.36"  # what the real control plane ran (shared notes: real-cluster.md)

# What every cluster starts with.
BUILT_IN = {
    ("Namespace", None, "default"), ("Namespace", None, "kube-system"), ("Namespace", None, "kube-public"),
    ("PriorityClass", None, "system-cluster-critical"), ("PriorityClass", None, "system-node-critical"),
}
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "RuntimeClass", "StorageClass"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def leading_comment(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def key(kind: str, namespace: str | None, name: str) -> tuple[str, str | None, str]:
    return (kind, None if kind in CLUSTER_SCOPED else namespace, name)


def pod_references(pod: dict[str, Any], namespace: str) -> set[tuple[str, str | None, str]]:
    """Every object a pod spec names: its namespace, claims, config, secrets, classes, account."""
    refs = {key("Namespace", None, namespace)}
    for volume in pod.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            refs.add(key("PersistentVolumeClaim", namespace, volume["persistentVolumeClaim"]["claimName"]))
        if "configMap" in volume and not volume["configMap"].get("optional"):
            refs.add(key("ConfigMap", namespace, volume["configMap"]["name"]))
        if "secret" in volume and not volume["secret"].get("optional"):
            refs.add(key("Secret", namespace, volume["secret"]["secretName"]))
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if field in source and not source[field].get("optional"):
                    refs.add(key(kind, namespace, source[field]["name"]))
        for env_from in container.get("envFrom", []):
            for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if field in env_from and not env_from[field].get("optional"):
                    refs.add(key(kind, namespace, env_from[field]["name"]))
    for secret in pod.get("imagePullSecrets", []):
        refs.add(key("Secret", namespace, secret["name"]))
    if pod.get("serviceAccountName", "default") != "default":
        refs.add(key("ServiceAccount", namespace, pod["serviceAccountName"]))
    if "priorityClassName" in pod:
        refs.add(key("PriorityClass", None, pod["priorityClassName"]))
    if "runtimeClassName" in pod:
        refs.add(key("RuntimeClass", None, pod["runtimeClassName"]))
    return refs


def pods_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs an object brings: an InferenceService's through the operator's builder."""
    namespace = doc["metadata"].get("namespace", "default")
    if doc["kind"] == "InferenceService":
        built = deployment(doc["metadata"]["name"], namespace, parse_spec(doc["spec"]), replicas=1)
        return [built["spec"]["template"]["spec"]]
    if doc["kind"] == "Job":
        return [doc["spec"]["template"]["spec"]]
    return []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_reference_is_created_first_or_built_in(path: Path):
    created: set[tuple[str, str | None, str]] = set(BUILT_IN)
    documented = set(re.findall(r"create secret generic ([-a-z0-9.]+)", leading_comment(path)))
    missing = []
    for doc in documents(path):
        namespace = doc["metadata"].get("namespace", "default")
        needs = {key("Namespace", None, namespace)} if doc["kind"] not in CLUSTER_SCOPED else set()
        for pod in pods_of(doc):
            needs |= pod_references(pod, namespace)
        for kind, ns, name in sorted(needs, key=str):
            if (kind, ns, name) not in created and not (kind == "Secret" and name in documented):
                missing.append(f"{doc['kind']} {doc['metadata']['name']} needs {kind} {name}"
                               + (f" in namespace {ns}" if ns else "") + " before it")
        created.add(key(doc["kind"], namespace, doc["metadata"]["name"]))
    assert missing == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_object_is_valid(path: Path):
    """Built-in kinds against Kubernetes' own schema (strict: unknown fields are errors), the
    InferenceService against the CRD after structural defaulting, and the Deployment the operator
    would create for it against Kubernetes' schema."""
    services = 0
    for doc in documents(path):
        if doc["kind"] == "InferenceService":
            services += 1
            assert crdcheck.validate(doc, crd()) == []
            built = deployment(doc["metadata"]["name"], doc["metadata"]["namespace"], parse_spec(doc["spec"]),
                               replicas=1)
            kubernetes_validate.validate(built, KUBERNETES_VERSION, strict=True)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert services == 1


def test_shared_objects_are_the_same_in_every_file():
    """Applying several examples re-applies their shared namespace and claim: a claim's spec is
    immutable once bound, so each file must say the same."""
    seen: dict[tuple[str, str | None, str], tuple[Path, dict[str, Any]]] = {}
    for path in EXAMPLES:
        for doc in documents(path):
            if doc["kind"] == "InferenceService":
                continue
            ident = key(doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])
            if ident in seen:
                assert doc == seen[ident][1], f"{ident} differs between {seen[ident][0].name} and {path.name}"
            seen[ident] = (path, doc)


def test_the_tiny_models_job_runs_the_operators_default_server_image():
    (job,) = [d for d in documents(REPO / "manifests" / "examples" / "tiny-cpu-builtin.yaml") if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == BuiltinAdapter.image
    assert container["args"][:1] == ["tiny-model"]
