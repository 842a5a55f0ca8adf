"""`tokenscale render`: the operator's children for an InferenceService, with no cluster."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO
from tests.unit.test_pod import PLATFORM
from tokenscale import desired
from tokenscale.api import parse_spec
from tokenscale.commands.render import RenderError, render
from tokenscale.settings import Settings

EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def inference_service(name: str, spec: dict[str, Any], namespace: str | None = "serving") -> dict[str, Any]:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "tokenscale.io/v1alpha1", "kind": "InferenceService", "metadata": metadata, "spec": spec}


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokenscale.cli", "render", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return [obj["kind"] for obj in objects]


def test_render_is_what_the_reconciler_builds():
    """The same call as reconcile.realise (desired.operator_children) with the operator's defaults."""
    spec = {**copy.deepcopy(PLATFORM), "monitoring": {"podMonitor": True}}
    objects = render(yaml.safe_dump(inference_service("chat", spec)), Settings())
    wanted = desired.operator_children("chat", "serving", parse_spec(spec), Settings(), current_replicas=None)
    assert objects == [wanted.deployment, wanted.service, wanted.pod_disruption_budget, wanted.pod_monitor]
    assert kinds(objects) == ["Deployment", "Service", "PodDisruptionBudget", "PodMonitor"]
    for obj in objects[:3]:
        kubernetes_validate.validate(obj, "1.33", strict=True)


def test_operator_options_change_the_output():
    text = yaml.safe_dump(inference_service("tiny", {"model": {"source": "m"}, "resources": {"gpus": 0},
                                                     "monitoring": {"podMonitor": True}}))
    default = render(text, Settings())
    assert default[0]["spec"]["template"]["spec"]["containers"][0]["image"] == Settings().default_server_image
    custom = render(text, Settings(default_server_image="registry.corp/tokenscale/server:1", service_label="svc",
                                   namespace_label="ns"))
    assert custom[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.corp/tokenscale/server:1"
    relabel = {r["targetLabel"] for r in custom[-1]["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    assert {"svc", "ns"} <= relabel


def test_pdb_only_when_several_replicas_are_possible_and_the_live_count_is_kept():
    one = inference_service("one", {"model": {"source": "m"}, "autoscaling": {"enabled": False}})
    assert kinds(render(yaml.safe_dump(one), Settings())) == ["Deployment", "Service"]
    auto = yaml.safe_dump(inference_service("auto", {"model": {"source": "m"},
                                                     "autoscaling": {"minReplicas": 1, "maxReplicas": 6}}))
    assert render(auto, Settings())[0]["spec"]["replicas"] == 1
    assert render(auto, Settings(), current_replicas=4)[0]["spec"]["replicas"] == 4


def test_the_cli_renders_every_inference_service_of_a_file_and_shows_the_pod_fields(tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "serving"}},  # skipped
        inference_service("chat", PLATFORM),
        inference_service("small", {"model": {"source": "m"}, "resources": {"gpus": 0},
                                    "autoscaling": {"enabled": False}}, namespace=None),
    ]))
    result = cli("-f", str(path), "--default-server-image", "registry.corp/server:2")
    assert result.returncode == 0, result.stderr
    objects = list(yaml.safe_load_all(result.stdout))
    assert [(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects] == [
        ("Deployment", "serving", "chat"), ("Service", "serving", "chat"), ("PodDisruptionBudget", "serving", "chat"),
        ("Deployment", "default", "small"), ("Service", "default", "small")]
    pod = objects[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "llm-reader" and pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod["terminationGracePeriodSeconds"] == 600 and len(pod["topologySpreadConstraints"]) == 2
    assert objects[0]["spec"]["template"]["metadata"]["labels"]["team"] == "search"
    env = {item["name"]: item for item in pod["containers"][0]["env"]}
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "api-keys"
    assert {"name": "chat-templates", "mountPath": "/etc/templates", "readOnly": True} in pod["containers"][0][
        "volumeMounts"]
    assert objects[3]["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.corp/server:2"


def test_the_cli_reads_standard_input_and_the_namespace_flag():
    text = yaml.safe_dump(inference_service("tiny", {"model": {"source": "m"}, "resources": {"gpus": 0}},
                                            namespace=None))
    result = cli("-f", "-", "-n", "team-a", stdin=text)
    assert result.returncode == 0, result.stderr
    assert {o["metadata"]["namespace"] for o in yaml.safe_load_all(result.stdout)} == {"team-a"}


def test_bad_input_exits_2_naming_the_field_and_prints_nothing():
    spec = copy.deepcopy(PLATFORM)
    spec["pod"]["labels"] = {"tokenscale.io/service": "other"}
    spec["autoscaling"] = {"minReplicas": 5, "maxReplicas": 2}
    text = yaml.safe_dump_all([inference_service("ok", {"model": {"source": "m"}}), inference_service("bad", spec)])
    result = cli("-f", "-", stdin=text)
    assert result.returncode == 2 and result.stdout == ""
    assert "InferenceService #2: serving/bad:" in result.stderr
    # The same text the operator puts in its Degraded condition (api.SpecError).
    assert "spec.pod.labels: " in result.stderr
    assert "spec.autoscaling: minReplicas must be less than or equal to maxReplicas" in result.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("kind: [unclosed", "not YAML"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "no tokenscale.io/v1alpha1 InferenceService"),
    (yaml.safe_dump(inference_service("x" * 64, {"model": {"source": "m"}})), "metadata.name"),
    (yaml.safe_dump(inference_service("Bad_Name", {"model": {"source": "m"}})), "metadata.name"),
    (yaml.safe_dump({**inference_service("x", {}), "spec": None}), "spec: must be an object"),
    (yaml.safe_dump(inference_service("x", {"model": {"source": "m"}, "pod": {"hostPID": True}})),
     "spec.pod.hostPID"),
], ids=["not-yaml", "no-inference-service", "name-too-long", "name-not-dns", "spec-null", "unknown-pod-field"])
def test_bad_documents_are_render_errors(text, message):
    with pytest.raises(RenderError) as raised:
        render(text, Settings())
    assert message in str(raised.value)


def test_a_missing_file_is_exit_2():
    result = cli("-f", str(REPO / "no-such-file.yaml"))
    assert result.returncode == 2 and "no-such-file.yaml" in result.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_renders_to_valid_kubernetes_objects(path):
    objects = render(path.read_text(), Settings(), filename=str(path))
    assert kinds(objects)[:2] == ["Deployment", "Service"]
    for obj in objects:
        if obj["kind"] != "PodMonitor":
            kubernetes_validate.validate(obj, "1.33", strict=True)


def test_the_example_in_docs_pod_md_renders_with_every_setting_it_shows():
    import re

    text = (REPO / "docs" / "pod.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    deployment = render(example, Settings())[0]
    kubernetes_validate.validate(deployment, "1.33", strict=True)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "llm-reader" and pod["terminationGracePeriodSeconds"] == 600
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert {"name": "chat-templates", "configMap": {"name": "templates"}} in pod["volumes"]
