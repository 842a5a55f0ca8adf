"""High availability as the chart deploys it: two operator replicas with the chart's environment
(ha.enabled: TOKENSCALE_PEERING, nothing per replica) meet in the ClusterKopfPeering the chart creates.
Exactly one acts; when it stops, the other takes over."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

import helm_python
import kmock
import pytest
import yaml

from tests.integration.conftest import Cluster, OperatorThread, wait_for
from tokenscale.cli import build_parser
from tokenscale.commands.run import settings_from_args
from tokenscale.settings import Settings

CHART = Path(__file__).resolve().parents[2] / "charts" / "tokenscale"
SPEC = {"model": {"source": "org/model-8b"}, "engine": {"type": "vllm"}, "resources": {"gpus": 1},
        "autoscaling": {"enabled": False}, "replicas": 1}


def replica_settings(cluster: Cluster) -> Settings:
    """One replica's Settings, parsed by `tokenscale run` from the chart's rendered environment."""
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render({"ha": {"enabled": True}}, name="tokenscale", namespace="tokenscale-system")
    objects = [o for name, text in rendered.items() if not name.endswith("NOTES.txt")
               for o in yaml.safe_load_all(text) if o]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    with mock.patch.dict(os.environ, env, clear=True):
        settings = settings_from_args(build_parser("run").parse_args(container["args"]))
    # Only what cannot hold outside a cluster changes: the kubeconfig, no liveness or metrics port
    # (both replicas share this process, pods would each have their own address).
    assert settings.metrics_address == "0.0.0.0:8081"
    return settings.replace(kubeconfig=str(cluster.kubeconfig), liveness=None, metrics_address=None)


def peers(cluster: Cluster) -> dict[str, Any]:
    peering = cluster.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "tokenscale")
    return peering.get("status") or {}


def deployment_exists(cluster: Cluster, name: str) -> bool:
    return bool(cluster.apps.list_namespaced_deployment("default", field_selector=f"metadata.name={name}").items)


@pytest.fixture(scope="module")
def peered_cluster(cluster: Cluster) -> Cluster:
    cluster.emulator.resources["kopf.dev/v1/clusterkopfpeerings"] = kmock.ResourceInfo(
        kind="ClusterKopfPeering", singular="clusterkopfpeering", namespaced=False,
        verbs={"get", "list", "watch", "create", "patch", "delete"})
    cluster.custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", {
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "tokenscale"}})
    return cluster


def test_two_replicas_of_the_chart_elect_one_and_fail_over(peered_cluster):
    cluster = peered_cluster
    first, second = replica_settings(cluster), replica_settings(cluster)
    assert first.peering == second.peering == "tokenscale" and not first.standalone
    assert first.priority != second.priority  # equal priorities would pause both (kopf's rule)
    leader, follower = sorted((first, second), key=lambda s: s.priority, reverse=True)

    with OperatorThread(follower), OperatorThread(leader) as active:
        wait_for(lambda: len(peers(cluster)) == 2, message="both replicas in the peering object")
        priorities = sorted(peer["priority"] for peer in peers(cluster).values())
        assert priorities == sorted((first.priority, second.priority))
        cluster.create_service("default", "served", SPEC)
        wait_for(lambda: deployment_exists(cluster, "served"), message="one replica serving")
        # The follower is paused: only the leader's kopf handled the object (one handler run, one create).
        creates = [r for r in cluster.emulator.request_log
                   if r.verb == "create" and r.resource == "deployments" and r.namespace == "default"]
        assert [r.status for r in creates] == [201]

        active.__exit__(None, None, None)  # the leader goes (a rollout, a node drain)
        wait_for(lambda: len(peers(cluster)) == 1, message="the leader leaving the peering object")
        cluster.create_service("default", "after-failover", SPEC)
        wait_for(lambda: deployment_exists(cluster, "after-failover"), timeout=20, message="the follower taking over")
