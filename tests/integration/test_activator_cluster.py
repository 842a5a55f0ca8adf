"""The activator's view of the cluster (activator/kube.py) against the emulated API server: which
services it serves, their ready replicas from EndpointSlices, the wake-up patch; and every request
it makes is granted by the chart's activator role, which grants nothing it does not use."""

from __future__ import annotations

import asyncio

import helm_python
import kubernetes
import yaml

from tests.integration.conftest import Cluster
from tests.integration.rbaccheck import CHART, allows, api_requests
from tokenscale.activator.hosts import KnownService
from tokenscale.activator.kube import KubeCluster
from tokenscale.desired.routing import (
    ACTIVATION_ANNOTATION,
    SERVICE_NAME_LABEL,
    SLICE_MANAGER,
    SLICE_MANAGER_LABEL,
    activation_requested_at,
)

ACTIVATED = {"minReplicas": 0, "activation": {"activator": True}}


def _slice(name: str, manager: str, port_name: str, port: int, endpoints: list[dict]) -> dict:
    return {"metadata": {"name": name, "labels": {SERVICE_NAME_LABEL: "llama", SLICE_MANAGER_LABEL: manager}},
            "addressType": "IPv4", "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": endpoints}


def activator_rules() -> list[dict]:
    with helm_python.Chart.load(CHART) as chart:
        texts = chart.render({"activator": {"enabled": True}}, name="tokenscale", namespace="tokenscale-system")
    objects = [doc for name, text in texts.items() if not name.endswith("NOTES.txt")
               for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
    (role,) = [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "tokenscale-activator"]
    return role["rules"]


def test_the_activator_reads_and_wakes_through_the_api_with_its_role_only(cluster: Cluster) -> None:
    cluster.api.user_agent = "activator-cluster-test"
    cluster.core.create_namespace({"metadata": {"name": "team-a"}})
    for name, autoscaling in (("llama", ACTIVATED), ("plain", {"minReplicas": 1})):
        cluster.create_service("team-a", name, {"model": {"source": "org/llama", "servedName": name},
                                                "autoscaling": autoscaling})
    discovery = kubernetes.client.DiscoveryV1Api(cluster.api)
    discovery.create_namespaced_endpoint_slice("team-a", _slice(
        "llama-x1", "endpointslice-controller.k8s.io", "http", 8000,
        [{"addresses": ["10.1.0.1"], "conditions": {"ready": True}},
         {"addresses": ["10.1.0.2"], "conditions": {"ready": False}}]))
    discovery.create_namespaced_endpoint_slice("team-a", _slice(  # its own route: never a replica
        "llama-activator", SLICE_MANAGER, "http", 8080, [{"addresses": ["10.9.0.1"]}]))
    start = len(cluster.emulator.request_log)

    async def calls():
        kube = KubeCluster(kubeconfig=str(cluster.kubeconfig))
        try:
            return (await kube.services(), await kube.ready_endpoints(("team-a", "llama")),
                    await kube.request_activation(("team-a", "llama")))
        finally:
            await kube.close()

    services, endpoints, _ = asyncio.run(calls())
    assert services == [KnownService("team-a", "llama", "llama")]  # only services routed through it
    assert endpoints == ["http://10.1.0.1:8000"]
    stamp = cluster.get_service("team-a", "llama")["metadata"]["annotations"][ACTIVATION_ANNOTATION]
    assert activation_requested_at({ACTIVATION_ANNOTATION: stamp}) is not None

    made = api_requests([r for r in cluster.emulator.request_log[start:] if r.user_agent == "tokenscale-activator"])
    rules = activator_rules()
    assert [f"{r.verb} {r.resource}" for r in made if not allows(rules, r)] == []
    used = {(r.group, r.resource, r.verb) for r in made}
    granted = {(g, res, v) for rule in rules for g in rule["apiGroups"] for res in rule["resources"]
               for v in rule["verbs"]}
    assert granted == used  # least privilege: nothing granted that it does not call
