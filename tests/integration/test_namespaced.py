"""`--namespace` scoping: the operator serves the namespaces it is given and nothing else."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import wait_for
from tokenscale.settings import Settings

pytestmark = pytest.mark.usefixtures("operator")
SPEC = {"model": {"source": "org/model"}, "resources": {"gpus": 1}, "autoscaling": {"enabled": False}}


@pytest.fixture(scope="module")
def operator_settings(cluster) -> Settings:
    return Settings(kubeconfig=str(cluster.kubeconfig), namespaces=("watched-a", "watched-b"), standalone=True,
                    liveness=None, log_format="plain")


def test_only_the_given_namespaces_are_served(cluster):
    cluster.create_service("ignored", "llama", SPEC)
    cluster.create_service("watched-b", "llama", SPEC)
    cluster.create_service("watched-a", "llama", SPEC)
    for namespace in ("watched-a", "watched-b"):
        wait_for(lambda ns=namespace: cluster.apps.read_namespaced_deployment("llama", ns), message=namespace)
    time.sleep(1.0)
    assert not cluster.emulator.live_objects("apps", "v1", "deployments", "ignored")
    assert "status" not in cluster.get_service("ignored", "llama")
    watched = {r.namespace for r in cluster.emulator.request_log if r.verb == "watch" and r.group == "tokenscale.io"}
    assert watched == {"watched-a", "watched-b"}
