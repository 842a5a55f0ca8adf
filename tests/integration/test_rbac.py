"""The chart's RBAC is exactly what the operator uses.

The real operator (kopf, `tokenscale run`'s code path) runs against the API emulator through every
path of the reconciler and the autoscaler (create, repair each child, shrink, recreate, scale, delete);
the emulator records every request with its RBAC verb. Each recorded request must be allowed by the
role the chart renders: all-namespaces mode (ClusterRole), namespaced mode (Roles in the watched
namespaces, a ClusterRole for cluster-scoped reads) and HA (peering). Every granted permission must
have been used, and the roles hold no wildcard and no rule outside DOCUMENTED (docs/install.md's table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import kmock
import pytest
import yaml

from tests.integration.conftest import Cluster, OperatorThread, gone, wait_for
from tests.integration.rbaccheck import AGGREGATED, allows, api_requests
from tokenscale.local.emulator import RequestRecord
from tokenscale.settings import Settings

CHART = Path(__file__).resolve().parents[2] / "charts" / "tokenscale"
TEST_AGENT = "tokenscale-rbac-test"  # the test's own requests, told apart from the operator's

# (API group, resource): verbs, each with the reason it is granted. docs/install.md shows this table.
DOCUMENTED: dict[tuple[str, str], set[str]] = {
    ("tokenscale.io", "inferenceservices"): {"get", "list", "watch", "patch"},
    ("tokenscale.io", "inferenceservices/status"): {"patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "update", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "update"},
    ("policy", "poddisruptionbudgets"): {"get", "create", "update", "delete"},
    ("monitoring.coreos.com", "podmonitors"): {"get", "create", "update", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "events"): {"create"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
    ("kopf.dev", "clusterkopfpeerings"): {"list", "watch", "patch"},
    ("kopf.dev", "kopfpeerings"): {"list", "watch", "patch"},
}

AUTOSCALED = {
    "model": {"source": "org/model-8b"},
    "engine": {"type": "vllm"},
    "resources": {"gpus": 1},
    # No Prometheus in this test: the autoscaler goes to the fallback count, which it must patch in.
    "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4, "onMetricsUnavailable": "ScaleTo",
                    "fallbackReplicas": 3},
}
SPEC = {
    "model": {"source": "org/model-8b", "servedName": "model-8b"},
    "engine": {"type": "vllm", "maxModelLen": 4096},
    "resources": {"gpus": 1},
    "monitoring": {"podMonitor": True},
    "autoscaling": {"enabled": False},
    "replicas": 2,
}


def rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm_python.Chart.load(CHART) as chart:
        texts = chart.render(values, name="tokenscale", namespace="tokenscale-system")
    return [doc for name, text in texts.items() if not name.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]




def roles(objects: list[dict[str, Any]]) -> dict[tuple[str, str | None], list[dict[str, Any]]]:
    """(kind, namespace) -> rules of every ClusterRole and Role bound to the operator (the roles
    aggregated into the built-in view/edit/admin are for people)."""
    return {(o["kind"], o["metadata"].get("namespace")): o["rules"]
            for o in objects if o["kind"] in ("ClusterRole", "Role") and not AGGREGATED & set(o["metadata"]["labels"])}




def podmonitor(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.custom.get_namespaced_custom_object(
        "monitoring.coreos.com", "v1", namespace, "podmonitors", name)



def lifecycle(cluster: Cluster, namespace: str, name: str) -> None:
    """Every path of the reconciler: create, repair hand edits of each child, shrink (the PDB and
    the PodMonitor go), recreate a deleted Deployment, delete."""
    cluster.create_service(namespace, name, SPEC)
    wait_for(lambda: cluster.apps.read_namespaced_deployment(name, namespace), message="the Deployment")
    wait_for(lambda: cluster.policy.read_namespaced_pod_disruption_budget(name, namespace), message="the PDB")
    wait_for(lambda: podmonitor(cluster, namespace, name), message="the PodMonitor")

    def ready() -> bool:  # play the kubelet until the operator sees the rollout done
        cluster.set_deployment_ready(namespace, name, ready=2)
        return (cluster.condition(namespace, name, "Ready") or {}).get("status") == "True"

    wait_for(ready, interval=0.2, message="Ready")

    # Hand edits: the Service is repaired at once (watched); the PDB and PodMonitor on the next spec change.
    port = cluster.core.read_namespaced_service(name, namespace).spec.ports[0]
    cluster.core.patch_namespaced_service(name, namespace, {"spec": {"ports": [
        {"name": port.name, "port": 1234, "targetPort": port.target_port, "protocol": "TCP"}]}})
    wait_for(lambda: cluster.core.read_namespaced_service(name, namespace).spec.ports[0].port == port.port,
             message="the Service repaired")
    cluster.policy.patch_namespaced_pod_disruption_budget(name, namespace, {"spec": {"maxUnavailable": 0}})
    cluster.custom.patch_namespaced_custom_object("monitoring.coreos.com", "v1", namespace, "podmonitors", name,
                                                  {"spec": {"podTargetLabels": ["edited"]}})
    cluster.patch_service(namespace, name, {"spec": {"replicas": 3}})
    wait_for(lambda: cluster.apps.read_namespaced_deployment(name, namespace).spec.replicas == 3,
             message="the Deployment updated")
    wait_for(lambda: "edited" not in podmonitor(cluster, namespace, name)["spec"].get("podTargetLabels", []),
             message="the PodMonitor repaired")

    cluster.patch_service(namespace, name, {"spec": {"replicas": 1, "monitoring": {"podMonitor": False}}})
    wait_for(lambda: gone(lambda: cluster.policy.read_namespaced_pod_disruption_budget(name, namespace)),
             message="the PDB removed")
    wait_for(lambda: gone(lambda: podmonitor(cluster, namespace, name)), message="the PodMonitor removed")

    cluster.apps.delete_namespaced_deployment(name, namespace)
    wait_for(lambda: cluster.apps.read_namespaced_deployment(name, namespace), message="the Deployment recreated")
    cluster.delete_service(namespace, name)
    wait_for(lambda: gone(lambda: cluster.get_service(namespace, name)), message="the InferenceService gone")


def autoscaled(cluster: Cluster, namespace: str, name: str) -> None:
    """The autoscaler's calls: it scales the Deployment (to the fallback count: there are no metrics
    here) and writes status; the pods it reads come from kopf's watch."""
    start = len(cluster.emulator.request_log)
    cluster.create_service(namespace, name, AUTOSCALED)
    wait_for(lambda: cluster.apps.read_namespaced_deployment(name, namespace), message="the Deployment")

    def scaled() -> bool:  # one replica ready ends the cold start; then the fallback applies
        cluster.set_deployment_ready(namespace, name, ready=1)
        return cluster.apps.read_namespaced_deployment(name, namespace).spec.replicas == 3

    wait_for(scaled, interval=0.2, message="the autoscaler scaling to fallbackReplicas")
    cluster.set_deployment_ready(namespace, name, ready=1)
    # The serving pods are watched (kopf's index of pods that cannot start), never listed per tick.
    assert any(r.resource == "pods" and r.verb == "watch" for r in cluster.emulator.request_log)
    assert not any(r.resource == "pods" and r.verb == "list" and r.namespace == namespace
                   for r in cluster.emulator.request_log[start:])
    cluster.delete_service(namespace, name)
    wait_for(lambda: gone(lambda: cluster.get_service(namespace, name)), message="the InferenceService gone")


def run_cycle(cluster: Cluster, namespaces: tuple[str, ...], peering: str | None = None) -> list[RequestRecord]:
    cluster.api.user_agent = TEST_AGENT
    for namespace in namespaces:
        if namespace not in [n.metadata.name for n in cluster.core.list_namespace().items]:
            cluster.core.create_namespace({"metadata": {"name": namespace}})
    settings = Settings(kubeconfig=str(cluster.kubeconfig), namespaces=namespaces, liveness=None,
                        standalone=peering is None, peering=peering,
                        watch_server_timeout=60, watch_client_timeout=70, request_timeout=10, tick_seconds=0.2,
                        log_format="plain", default_server_image="tokenscale/server:test")
    start = len(cluster.emulator.request_log)
    with OperatorThread(settings):
        for namespace in namespaces or ("default",):
            lifecycle(cluster, namespace, "rbac-check")
            autoscaled(cluster, namespace, "rbac-autoscaled")
    return api_requests([r for r in cluster.emulator.request_log[start:] if r.user_agent != TEST_AGENT])


@pytest.fixture(scope="module")
def all_namespaces_requests(cluster: Cluster) -> list[RequestRecord]:
    return run_cycle(cluster, ())


@pytest.fixture(scope="module")
def namespaced_requests(cluster: Cluster, all_namespaces_requests: list[RequestRecord]) -> list[RequestRecord]:
    return run_cycle(cluster, ("team-a", "team-b"))  # after the first operator has stopped


@pytest.fixture(scope="module")
def peered_requests(cluster: Cluster, namespaced_requests: list[RequestRecord]) -> list[RequestRecord]:
    """HA: the operator in the ClusterKopfPeering the chart creates (kopf.dev, as in the chart's crds/)."""
    cluster.emulator.resources["kopf.dev/v1/clusterkopfpeerings"] = kmock.ResourceInfo(
        kind="ClusterKopfPeering", singular="clusterkopfpeering", namespaced=False,
        verbs={"get", "list", "watch", "create", "patch", "delete"})
    cluster.api.user_agent = TEST_AGENT
    cluster.custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", {
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "tokenscale"}})
    requests = run_cycle(cluster, (), peering="tokenscale")
    keepalives = [r for r in requests if r.resource == "clusterkopfpeerings" and r.verb == "patch"]
    assert keepalives and all(r.status == 200 for r in keepalives), "no keep-alive in the peering object"
    return requests


def denied(requests: list[RequestRecord], rules: list[dict[str, Any]]) -> list[str]:
    return sorted({f"{r.verb} {r.group or 'core'}/{r.resource}{'/' + r.subresource if r.subresource else ''}"
                   f" in {r.namespace or 'the cluster'}" for r in requests if not allows(rules, r)})


def test_every_request_in_all_namespaces_mode_is_allowed_by_the_cluster_role(all_namespaces_requests):
    (rules,) = roles(rendered({})).values()
    assert len(all_namespaces_requests) > 20
    assert denied(all_namespaces_requests, rules) == []


def test_every_request_in_namespaced_mode_is_allowed_by_the_roles(namespaced_requests):
    by_scope = roles(rendered({"watchNamespaces": ["team-a", "team-b"]}))
    cluster_rules = by_scope[("ClusterRole", None)]
    for namespace in ("team-a", "team-b"):
        local = [r for r in namespaced_requests if r.namespace == namespace]
        assert local, f"no request in {namespace}"
        assert denied(local, by_scope[("Role", namespace)]) == []
    # Outside the watched namespaces only cluster-scoped reads: a Role cannot grant anything else.
    elsewhere = [r for r in namespaced_requests if r.namespace not in ("team-a", "team-b")]
    assert all(r.namespace is None for r in elsewhere), denied(elsewhere, [])
    assert denied(elsewhere, cluster_rules) == []


def test_ha_requests_are_allowed_by_the_ha_cluster_role(peered_requests):
    (rules,) = roles(rendered({"ha": {"enabled": True}})).values()
    assert any(r.resource == "clusterkopfpeerings" for r in peered_requests)
    assert denied(peered_requests, rules) == []


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, res, v) for rule in rules for g in rule["apiGroups"] for res in rule["resources"]
            for v in rule["verbs"]}


def used(requests: list[RequestRecord]) -> set[tuple[str, str, str]]:
    return {(r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""), r.verb) for r in requests}


def test_every_granted_permission_was_used(all_namespaces_requests, namespaced_requests, peered_requests):
    """Least privilege: the roles grant nothing the operator did not call."""
    (default_rules,) = roles(rendered({})).values()
    assert sorted(granted(default_rules) - used(all_namespaces_requests)) == []
    namespaced = roles(rendered({"watchNamespaces": ["team-a", "team-b"]}))
    for rules in namespaced.values():
        assert sorted(granted(rules) - used(namespaced_requests)) == []
    (ha_rules,) = roles(rendered({"ha": {"enabled": True}})).values()
    assert sorted(granted(ha_rules) - used(peered_requests)) == []


@pytest.mark.parametrize("values", [
    {},
    {"watchNamespaces": ["team-a", "team-b"]},
    {"ha": {"enabled": True}},
    {"ha": {"enabled": True}, "watchNamespaces": ["team-a"]},
])
def test_roles_hold_no_wildcard_and_nothing_undocumented(values):
    for rules in roles(rendered(values)).values():
        for rule in rules:
            assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames, no nonResourceURLs
            for field in rule.values():
                assert "*" not in field and not any("*" in item for item in field)
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    extra = set(rule["verbs"]) - DOCUMENTED.get((group, resource), set())
                    assert not extra, f"{group or 'core'}/{resource}: {sorted(extra)} not in the documented list"
            assert "secrets" not in rule["resources"]


def test_the_documented_list_is_the_table_in_docs_install():
    text = (Path(__file__).resolve().parents[2] / "docs" / "install.md").read_text()
    table = text.split("| API group | resource | verbs | why |")[1].split("\n\n")[0]
    documented: dict[tuple[str, str], set[str]] = {}
    for row in table.strip().splitlines()[1:]:
        group, resources, verbs = (cell.strip() for cell in row.strip("|").split("|")[:3])
        group = "" if group == "core" else group.strip("`")
        for resource in resources.split("`")[1::2]:
            documented[(group, resource)] = {verb.strip() for verb in verbs.split(",")}
    assert documented == DOCUMENTED
