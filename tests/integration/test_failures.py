"""What went wrong is visible on the InferenceService, in words a user can act on (real kopf, the
emulated API): the real-cluster failure cases of docs/operator.md — a crash-looping pod, a child
the API server refuses (a name too long for a label value; a Service IP range that ran out) —
each give a condition and one Warning event naming the cause. The operator runs with its metrics
port taken, as a second operator on the node would leave it: it logs that and autoscales anyway.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.conftest import wait_for
from tokenscale.local.emulator import Fault
from tokenscale.settings import Settings

pytestmark = pytest.mark.usefixtures("operator")

NS = "failures"
AUTOSCALED = {"model": {"source": "org/model"}, "engine": {"type": "builtin"}, "resources": {"gpus": 1},
              "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}}
MANUAL = {"model": {"source": "org/model"}, "engine": {"type": "vllm"}, "autoscaling": {"enabled": False},
          "replicas": 1}
OS_ERROR = ("OSError: meta-llama/Llama-3.1-8B-Instruct is not a local folder and is not a valid model identifier "
            "listed on 'https://huggingface.co/models'")


@pytest.fixture(scope="module")
def taken_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture(scope="module")
def operator_settings(cluster, taken_port) -> Settings:
    return Settings(kubeconfig=str(cluster.kubeconfig), standalone=True, liveness=None,
                    metrics_address=f"127.0.0.1:{taken_port}", watch_server_timeout=60, watch_client_timeout=70,
                    request_timeout=10, tick_seconds=0.5, log_level="INFO", log_format="plain",
                    default_server_image="tokenscale/server:test")


def _warnings(cluster, name, reason):
    return [e for e in cluster.events_for(NS, name) if e.type == "Warning" and e.reason == reason]


def test_a_crash_looping_pod_is_named_not_shown_as_loading(cluster):
    cluster.create_service(NS, "crashy", AUTOSCALED)
    wait_for(lambda: cluster.apps.read_namespaced_deployment("crashy", NS), message="the Deployment")
    cluster.set_deployment_ready(NS, "crashy", ready=0)
    # The kubelet's view of the pod, as the real cluster showed it.
    cluster.core.create_namespaced_pod(NS, {
        "metadata": {"name": "crashy-7d9f-x2v", "labels": {"tokenscale.io/service": "crashy"}},
        "spec": {"containers": [{"name": "server", "image": "tokenscale/server:test"}]}})
    cluster.core.patch_namespaced_pod_status("crashy-7d9f-x2v", NS, {"status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "server", "ready": False, "started": False, "restartCount": 7,
                               "image": "tokenscale/server:test", "imageID": "",
                               "state": {"waiting": {"reason": "CrashLoopBackOff",
                                                     "message": "back-off 5m0s restarting failed container"}},
                               "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                            "message": OS_ERROR}}}]}})
    ready = wait_for(lambda: (c := cluster.condition(NS, "crashy", "Ready")) and c["reason"] == "CrashLoopBackOff"
                     and c, timeout=10, message="Ready=False CrashLoopBackOff")
    assert ready["status"] == "False" and "loading the model" not in ready["message"]
    assert "exit code 1: OSError: meta-llama/Llama-3.1-8B-Instruct is not a local folder" in ready["message"]
    degraded = cluster.condition(NS, "crashy", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "CrashLoopBackOff")
    limited = wait_for(lambda: (c := cluster.condition(NS, "crashy", "ScalingLimited")) and c["status"] == "True"
                       and c, message="ScalingLimited")
    assert limited["reason"] == "PodsFailing" and "not counted as capacity on its way" in limited["message"]
    decisions = cluster.get_service(NS, "crashy")["status"]["decisions"]
    assert decisions[-1]["limitedBy"] == "podsFailing" and "CrashLoopBackOff" in decisions[-1]["reason"]
    events = wait_for(lambda: _warnings(cluster, "crashy", "CrashLoopBackOff"), message="the Warning event")
    time.sleep(2.0)  # four more ticks: still one event
    assert len(_warnings(cluster, "crashy", "CrashLoopBackOff")) == len(events) == 1
    assert "OSError" in events[0].message

    # Fixed (a new image): the pod becomes ready, and the service recovers.
    cluster.core.patch_namespaced_pod_status("crashy-7d9f-x2v", NS, {"status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "server", "ready": True, "started": True, "restartCount": 7,
                               "image": "tokenscale/server:test", "imageID": "", "state": {"running": {}}}]}})
    cluster.set_deployment_ready(NS, "crashy", ready=1)
    wait_for(lambda: (cluster.condition(NS, "crashy", "Degraded") or {}).get("status") == "False",
             timeout=10, message="Degraded cleared")
    assert cluster.condition(NS, "crashy", "Ready")["status"] == "True"


def test_a_name_too_long_for_a_label_value_is_refused_before_any_child(cluster):
    # The CRD refuses such a name on create; an object admitted by an older CRD reaches the operator,
    # which says why instead of sending children the API server would refuse.
    name = "llama-3-1-8b-instruct-for-the-customer-support-team-in-emea-production"  # 70 characters
    cluster.create_service(NS, name, MANUAL)
    degraded = wait_for(lambda: (c := cluster.condition(NS, name, "Degraded")) and c["status"] == "True" and c,
                        message="Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "metadata.name must be at most 63 characters" in degraded["message"]
    events = wait_for(lambda: _warnings(cluster, name, "InvalidSpec"), message="the Warning event")
    assert "63 characters" in events[0].message
    assert not cluster.emulator.live_objects("apps", "v1", "deployments", NS) or all(
        d["metadata"]["name"] != name for d in cluster.emulator.live_objects("apps", "v1", "deployments", NS))


def test_a_refused_deployment_carries_the_servers_message_and_causes(cluster):
    # What kube-apiserver answers when a validating admission policy or a webhook refuses a field.
    message = ('Deployment.apps "refused" is invalid: spec.template.spec.containers[0].image: Invalid value: '
               '"tokenscale/server:test": images must come from registry.example.com')
    cluster.emulator.faults[("create", "deployments")] = Fault(
        422, "Invalid", message, times=1000, details={"name": "refused", "group": "apps", "kind": "Deployment",
        "causes": [{"reason": "FieldValueInvalid", "field": "spec.template.spec.containers[0].image",
                    "message": "images must come from registry.example.com"}]})
    try:
        cluster.create_service(NS, "refused", MANUAL)
        degraded = wait_for(lambda: (c := cluster.condition(NS, "refused", "Degraded")) and c["status"] == "True"
                            and c, message="Degraded")
        assert degraded["reason"] == "ApplyFailed"
        assert "Unprocessable Entity" not in degraded["message"]
        assert f"422 Invalid: {message}" in degraded["message"]
        events = wait_for(lambda: _warnings(cluster, "refused", "ApplyFailed"), message="the Warning event")
        assert "images must come from registry.example.com" in events[0].message
    finally:
        del cluster.emulator.faults[("create", "deployments")]
        cluster.custom.delete_namespaced_custom_object("tokenscale.io", "v1alpha1", NS, "inferenceservices", "refused")


def test_a_refused_service_says_why(cluster):
    cluster.emulator.faults[("create", "services")] = Fault(
        500, "InternalError", "Internal error occurred: failed to allocate a serviceIP: range is full", times=1000)
    try:
        cluster.create_service(NS, "no-ip", MANUAL)
        degraded = wait_for(lambda: (c := cluster.condition(NS, "no-ip", "Degraded")) and c["status"] == "True"
                            and c, message="Degraded")
    finally:
        del cluster.emulator.faults[("create", "services")]
    assert degraded["message"] == ("applying the serving workload failed: 500 InternalError: Internal error occurred: "
                                   "failed to allocate a serviceIP: range is full")
    assert "Internal Server Error" not in degraded["message"]
    assert wait_for(lambda: _warnings(cluster, "no-ip", "ApplyFailed"), message="the Warning event")


def test_autoscaling_goes_on_with_the_metrics_port_taken(cluster, taken_port):
    """The operator started with --metrics-address on a port another process holds (its one error is
    tested in test_observability): the autoscaler ticks all the same."""
    cluster.create_service(NS, "still-scaled", {**AUTOSCALED, "autoscaling": {
        **AUTOSCALED["autoscaling"], "onMetricsUnavailable": "ScaleTo", "fallbackReplicas": 2}})
    wait_for(lambda: cluster.apps.read_namespaced_deployment("still-scaled", NS), message="the Deployment")
    cluster.set_deployment_ready(NS, "still-scaled", ready=1)
    # No Prometheus here: the fallback count is the autoscaler's doing.
    wait_for(lambda: cluster.apps.read_namespaced_deployment("still-scaled", NS).spec.replicas == 2,
             timeout=10, message="the autoscaler acting")
