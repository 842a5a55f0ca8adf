"""An API server that drops a field the operator sets (as one too old for preStop `sleep` would):
the operator repairs what it can and does not fight the server in a loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import Cluster, wait_for
from tokenscale.local.emulator import KubernetesEmulator, start_emulator

pytestmark = pytest.mark.usefixtures("operator")


class OldApiServer(KubernetesEmulator):
    """Prunes `lifecycle` from Deployment containers, like a server without PodLifecycleSleepAction."""

    def _store(self, key: tuple[Any, ...], obj: dict[str, Any], event_type: str) -> None:
        if key[0].plural == "deployments":
            for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                container.pop("lifecycle", None)
        super()._store(key, obj, event_type)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_emulator(OldApiServer())
    try:
        yield Cluster(running, running.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config"))
    finally:
        running.stop()


def _deployment_writes(cluster: Cluster) -> int:
    return sum(1 for r in cluster.emulator.request_log
               if r.resource == "deployments" and r.verb in ("create", "update", "patch"))


def test_a_field_the_server_drops_is_not_fought_over(cluster):
    cluster.create_service("old", "llama", {"model": {"source": "m"}, "engine": {"type": "vllm"},
                                            "autoscaling": {"enabled": False}})
    deployment = wait_for(lambda: cluster.apps.read_namespaced_deployment("llama", "old"), message="Deployment")
    assert deployment.spec.template.spec.containers[0].lifecycle is None  # pruned by the "old" server
    # A hand edit is still repaired...
    cluster.apps.patch_namespaced_deployment("llama", "old", {"spec": {"revisionHistoryLimit": 99}})
    wait_for(lambda: cluster.apps.read_namespaced_deployment("llama", "old").spec.revision_history_limit == 5,
             message="the repair")
    # ...and then the operator goes quiet instead of replacing the Deployment on every event.
    time.sleep(1.0)
    settled = _deployment_writes(cluster)
    time.sleep(2.0)
    assert _deployment_writes(cluster) == settled
    # The create, the repair, and a replace by each handler that met the pruned field before the
    # first one recorded it (handlers of the service, its Deployment and its Service race): a few.
    assert settled <= 10
