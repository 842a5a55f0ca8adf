"""Pod settings through the real operator (kopf) against the emulated API over HTTP: the
Deployment the operator creates is what `tokenscale render` prints, and a setting removed from
the spec is removed from the Deployment, with no write loop afterwards."""

from __future__ import annotations

import copy
import time

import pytest
import yaml

from tests.integration.conftest import wait_for
from tests.unit.test_pod import PLATFORM
from tokenscale.commands.render import render
from tokenscale.desired.drift import differences

pytestmark = pytest.mark.usefixtures("operator")


def _live(cluster, namespace, name):
    return cluster.api.sanitize_for_serialization(cluster.apps.read_namespaced_deployment(name, namespace))


def _writes(cluster, name):
    return sum(1 for r in cluster.emulator.request_log
               if r.method in ("PUT", "PATCH", "POST") and "/deployments" in r.path and name in r.path)


def _settled(cluster, name, seconds=1.0):
    before = _writes(cluster, name)
    time.sleep(seconds)
    return _writes(cluster, name) == before


def test_the_operator_creates_what_render_prints_and_removes_what_the_spec_drops(cluster, operator_settings):
    spec = copy.deepcopy(PLATFORM)
    cluster.create_service("platform", "chat", spec)
    live = wait_for(lambda: _live(cluster, "platform", "chat"), message="the Deployment")
    (rendered, *_rest) = render(yaml.safe_dump({
        "apiVersion": "tokenscale.io/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "platform"}, "spec": spec}), operator_settings)
    assert differences({"metadata": {"labels": rendered["metadata"]["labels"]}, "spec": rendered["spec"]}, live) == []
    pod = live["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "llm-reader" and pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert wait_for(lambda: _settled(cluster, "chat"), message="no write loop")

    # A rollout restart by hand stays; the settings dropped from the spec go.
    cluster.apps.patch_namespaced_deployment("chat", "platform", {"spec": {"template": {"metadata": {
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-02T06:00:00Z"}}}}})
    cluster.patch_service("platform", "chat", {"spec": {"pod": {
        "serviceAccountName": None, "labels": {"team": None}, "annotations": {"example.com/owner": None}}}})
    assert "serviceAccountName" not in cluster.get_service("platform", "chat")["spec"]["pod"]
    updated = wait_for(lambda: "serviceAccountName" not in (d := _live(cluster, "platform", "chat"))[
        "spec"]["template"]["spec"] and d, message="serviceAccountName removed")
    template = updated["spec"]["template"]
    assert "team" not in template["metadata"]["labels"]
    assert template["metadata"]["labels"]["cost-center"] == "ml-42"
    assert "example.com/owner" not in template["metadata"]["annotations"]
    assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert template["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] == "2026-12-02T06:00:00Z"
    assert wait_for(lambda: _settled(cluster, "chat"), message="no write loop after the removal")
