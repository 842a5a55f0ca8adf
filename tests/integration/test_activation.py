"""The operator's side of scale from zero, with real kopf against the emulated API: the activator
EndpointSlice comes and goes with ready replicas, the wake-up annotation scales 0 -> 1 at once
(and a stale one does not), and every call the operator makes is granted by the chart's roles
with the activator enabled (and nothing more is granted)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import helm_python
import kubernetes
import pytest
import yaml

from tests.integration.conftest import Cluster, OperatorThread, gone, wait_for
from tests.integration.rbaccheck import AGGREGATED, CHART, allows, api_requests
from tokenscale.activation import ACTIVATOR_SERVICE_ENV
from tokenscale.api.wire import rfc3339
from tokenscale.desired.routing import ACTIVATION_ANNOTATION, SERVICE_NAME_LABEL, SLICE_MANAGER_LABEL
from tokenscale.settings import Settings

TEST_AGENT = "activation-test"
RELEASE_NAMESPACE, ACTIVATOR = "tokenscale-system", "tokenscale-activator"
SPEC = {"model": {"source": "org/model"}, "replicas": 0,
        "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "activation": {"activator": True}}}


@pytest.fixture(scope="module")
def requests_seen(cluster: Cluster) -> Iterator[list]:
    """Run the whole story once; yields the operator's own API requests."""
    cluster.api.user_agent = TEST_AGENT
    for namespace in ("team-a", RELEASE_NAMESPACE):
        cluster.core.create_namespace({"metadata": {"name": namespace}})
    discovery = kubernetes.client.DiscoveryV1Api(cluster.api)
    discovery.create_namespaced_endpoint_slice(RELEASE_NAMESPACE, {
        "metadata": {"name": f"{ACTIVATOR}-abc", "labels": {SERVICE_NAME_LABEL: ACTIVATOR,
                                                             SLICE_MANAGER_LABEL: "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4", "ports": [{"name": "proxy", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.0.0.9"], "conditions": {"ready": True}},
                      {"addresses": ["10.0.0.10"], "conditions": {"ready": False}}]})
    settings = Settings(kubeconfig=str(cluster.kubeconfig), standalone=True, liveness=None,
                        watch_server_timeout=60, watch_client_timeout=70, request_timeout=10,
                        tick_seconds=0.5, log_format="plain", default_server_image="tokenscale/server:test")
    start = len(cluster.emulator.request_log)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ACTIVATOR_SERVICE_ENV, f"{RELEASE_NAMESPACE}/{ACTIVATOR}")
        with OperatorThread(settings):
            story(cluster, discovery)
    yield api_requests([r for r in cluster.emulator.request_log[start:] if r.user_agent != TEST_AGENT])


def slice_of(discovery, name: str = "llama"):
    try:
        return discovery.read_namespaced_endpoint_slice(f"{name}-activator", "team-a")
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return None
        raise



def story(cluster: Cluster, discovery) -> None:
    cluster.create_service("team-a", "llama", SPEC)
    # At zero: the Service's traffic is routed to the activator's ready pod, under the Service's port name.
    routed = wait_for(lambda: slice_of(discovery), message="the activator slice")
    assert [e.addresses for e in routed.endpoints] == [["10.0.0.9"]]
    assert [(p.name, p.port) for p in routed.ports] == [("http", 8080)]
    assert routed.metadata.labels[SERVICE_NAME_LABEL] == "llama"
    assert routed.metadata.owner_references[0].kind == "InferenceService"

    # The activator holds a request: the annotation wakes the service at once.
    asked = time.monotonic()
    cluster.patch_service("team-a", "llama", {"metadata": {"annotations": {ACTIVATION_ANNOTATION: rfc3339(time.time(), millis=True)}}})
    wait_for(lambda: cluster.apps.read_namespaced_deployment("llama", "team-a").spec.replicas == 1,
             timeout=5, message="the wake-up 0 -> 1")
    assert time.monotonic() - asked < 3.0
    wait_for(lambda: any(e.reason == "Activated" for e in cluster.events_for("team-a", "llama")),
             message="the Activated event")
    assert slice_of(discovery) is not None  # still routed while the replica loads

    # A replica is ready: the slice goes.
    cluster.set_deployment_ready("team-a", "llama", ready=1)
    wait_for(lambda: slice_of(discovery) is None, message="the activator slice removed")

    # Back to zero, as the autoscaler does once the service has been idle (a request's stamp is then
    # old: it counts as demand for 30 s); the stamp left from the last visit wakes nothing.
    stale = rfc3339(time.time() - 60, millis=True)
    cluster.patch_service("team-a", "llama", {"metadata": {"annotations": {ACTIVATION_ANNOTATION: stale}}})
    cluster.apps.patch_namespaced_deployment("llama", "team-a", {"spec": {"replicas": 0}})
    cluster.set_deployment_ready("team-a", "llama", ready=0)
    wait_for(lambda: slice_of(discovery), message="the activator slice again")
    cluster.patch_service("team-a", "llama", {"spec": {"costPerGpuHour": 1.0}})  # an event with the old stamp
    time.sleep(1.5)
    assert cluster.apps.read_namespaced_deployment("llama", "team-a").spec.replicas == 0
    # Deleted (its slice goes with it) and created again under the same name: routed again.
    cluster.delete_service("team-a", "llama")
    wait_for(lambda: slice_of(discovery) is None, message="the slice collected with its owner")
    wait_for(lambda: gone(lambda: cluster.apps.read_namespaced_deployment("llama", "team-a")),
             message="the old Deployment collected")
    cluster.create_service("team-a", "llama", SPEC)
    again = wait_for(lambda: slice_of(discovery), message="the new service's activator slice")
    assert again.metadata.owner_references[0].uid == cluster.get_service("team-a", "llama")["metadata"]["uid"]
    # ... and a service that does not use the activator gets no slice.
    cluster.create_service("team-a", "plain", {"model": {"source": "org/model"}, "replicas": 0,
                                               "autoscaling": {"enabled": False}})
    wait_for(lambda: cluster.apps.read_namespaced_deployment("plain", "team-a"), message="the plain Deployment")
    time.sleep(1.0)
    assert slice_of(discovery, "plain") is None


def chart_rules() -> dict[tuple[str, str | None], list[dict]]:
    with helm_python.Chart.load(CHART) as chart:
        texts = chart.render({"activator": {"enabled": True}}, name="tokenscale", namespace=RELEASE_NAMESPACE)
    objects = [doc for name, text in texts.items() if not name.endswith("NOTES.txt")
               for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
    bound = {(b["roleRef"]["kind"], b["roleRef"]["name"], b["metadata"].get("namespace"))
             for b in objects if b["kind"] in ("ClusterRoleBinding", "RoleBinding")
             and any(s["name"] == "tokenscale" for s in b["subjects"])}  # the operator's ServiceAccount
    return {(o["kind"], o["metadata"].get("namespace")): o["rules"] for o in objects
            if o["kind"] in ("ClusterRole", "Role") and not AGGREGATED & set(o["metadata"]["labels"])
            and (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) in bound}


def test_every_call_of_the_operator_is_granted_with_the_activator_enabled(requests_seen) -> None:
    rules = chart_rules()
    cluster_rules = rules[("ClusterRole", None)]
    own = rules[("Role", RELEASE_NAMESPACE)]
    denied = sorted({f"{r.verb} {r.group}/{r.resource} in {r.namespace}" for r in requests_seen
                     if not allows(cluster_rules, r) and not (r.namespace == RELEASE_NAMESPACE and allows(own, r))})
    assert denied == []
    slices = {r.verb for r in requests_seen if r.resource == "endpointslices"}
    assert {"list", "create", "delete"} <= slices  # the grants are used (patch: on a re-point)
