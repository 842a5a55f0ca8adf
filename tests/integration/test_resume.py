"""An operator restart resumes: what drifted while it was down is repaired on start."""

from __future__ import annotations

from tests.integration.conftest import OperatorThread, wait_for

SPEC = {"model": {"source": "org/model"}, "engine": {"type": "vllm"}, "autoscaling": {"enabled": False},
        "replicas": 2}


def test_drift_while_the_operator_was_down_is_repaired_on_resume(cluster, operator_settings):
    with OperatorThread(operator_settings):
        cluster.create_service("resume", "llama", SPEC)
        wait_for(lambda: cluster.apps.read_namespaced_deployment("llama", "resume"), message="the Deployment")
        wait_for(lambda: (cluster.get_service("resume", "llama").get("status") or {}).get("endpoint"),
                 message="status")

    # The operator is down: someone edits the Deployment and deletes the Service.
    cluster.apps.patch_namespaced_deployment("llama", "resume", {"spec": {"replicas": 7}})
    cluster.core.delete_namespaced_service("llama", "resume")

    with OperatorThread(operator_settings):
        wait_for(lambda: cluster.apps.read_namespaced_deployment("llama", "resume").spec.replicas == 2,
                 message="spec.replicas restored")
        service = wait_for(lambda: cluster.core.read_namespaced_service("llama", "resume"), message="Service back")
        assert service.spec.ports[0].port == 8000
