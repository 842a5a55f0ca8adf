"""The InferenceService API: the models, the generated CRD, and the two kept in step."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO
from tests.support import crdcheck
from tokenscale.api import InferenceServiceSpec, SpecError, parse_spec, parse_status
from tokenscale.api.crd import crd, crd_yaml

CRD_FILE = REPO / "crds" / "tokenscale.io_inferenceservices.yaml"
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))

VALID = {
    "apiVersion": "tokenscale.io/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "svc", "namespace": "default"},
    "spec": {"model": {"source": "meta-llama/Llama-3.1-8B-Instruct"}},
}


def with_spec(**changes) -> dict:
    """VALID with `a.b.c=value` style changes applied to its spec (None deletes the key)."""
    obj = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        node = obj["spec"]
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return obj


def test_committed_crd_matches_generator():
    assert CRD_FILE.read_text() == crd_yaml(), "crds/ is stale: run `make crds`"


def test_crd_is_a_valid_apiextensions_object():
    kubernetes_validate.validate(yaml.safe_load(crd_yaml()), "1.33", strict=True)


def test_crd_shape():
    spec = crd()["spec"]
    assert spec["names"]["shortNames"] == ["tsvc"] and spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Engine", "Model", "Ready", "Desired", "Tokens/s", "Queue", "Age"} <= columns


def _walk(schema, path="schema"):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_and_documented():
    schema = crdcheck.version_schema(crd())
    for path, node in _walk(schema["properties"]["spec"], "spec"):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert "$ref" not in node and "nullable" not in node, path
        if path != "spec" and not path.endswith(("[]", "}")):
            assert node.get("description"), f"{path} has no description (kubectl explain text)"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path):
    obj = yaml.safe_load(path.read_text())
    assert crdcheck.validate(obj, crd()) == []
    parse_spec(obj["spec"])


def test_crd_defaults_agree_with_the_model():
    """What the API server fills in and what pydantic assumes must be the same service."""
    schema = crdcheck.version_schema(crd())
    defaulted = crdcheck.apply_defaults(copy.deepcopy(VALID), schema)["spec"]
    from_model = InferenceServiceSpec.model_validate(VALID["spec"]).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )
    # The model also lists empty collections; the API server leaves them absent.
    def prune(value):
        if isinstance(value, dict):
            pruned = {k: prune(v) for k, v in value.items()}
            return {k: v for k, v in pruned.items() if v not in ({}, [])}
        return value

    assert prune(from_model) == prune(defaulted)
    assert InferenceServiceSpec.model_validate(defaulted) == InferenceServiceSpec.model_validate(VALID["spec"])


# (id, the invalid resource, a fragment both the CRD and the model must name)
INVALID = [
    ("missing-model", with_spec(model=None), "model"),
    ("empty-source", with_spec(model__source=""), "source"),
    ("source-wrong-type", with_spec(model__source=7), "source"),
    ("unknown-engine", with_spec(engine__type="triton"), "type"),
    ("unknown-top-level-field", with_spec(replicaCount=2), "replicaCount"),
    ("unknown-nested-field", with_spec(autoscaling__minReplica=1), "minReplica"),
    ("negative-gpus", with_spec(resources__gpus=-1), "gpus"),
    ("too-many-gpus", with_spec(resources__gpus=65), "gpus"),
    ("gpus-as-string", with_spec(resources__gpus="one"), "gpus"),
    ("bad-memory-quantity", with_spec(resources__memory="lots"), "memory"),
    ("bad-cpu-quantity", with_spec(resources__cpu="4 cores"), "cpu"),
    ("bad-gpu-resource-name", with_spec(resources__gpuResourceName="nvidia gpu!"), "gpuResourceName"),
    ("min-above-max", with_spec(autoscaling__minReplicas=5, autoscaling__maxReplicas=2), "minReplicas"),
    ("negative-min", with_spec(autoscaling__minReplicas=-1), "minReplicas"),
    ("zero-max", with_spec(autoscaling__maxReplicas=0), "maxReplicas"),
    ("zero-target", with_spec(autoscaling__targetTokensPerSecondPerReplica=0), "targetTokensPerSecondPerReplica"),
    ("unknown-mode", with_spec(autoscaling__mode="Aggressive"), "mode"),
    ("enabled-as-string", with_spec(autoscaling__enabled="yes"), "enabled"),
    ("scale-to-zero-with-min-1", with_spec(autoscaling__scaleToZeroAfterSeconds=300), "scaleToZeroAfterSeconds"),
    ("min-zero-without-activation", with_spec(autoscaling__minReplicas=0), "activation"),
    ("scaleto-without-fallback", with_spec(autoscaling__onMetricsUnavailable="ScaleTo"), "fallbackReplicas"),
    ("fallback-above-max", with_spec(autoscaling__fallbackReplicas=20), "fallbackReplicas"),
    ("unknown-metrics-action", with_spec(autoscaling__onMetricsUnavailable="ReadAsZero"), "onMetricsUnavailable"),
    ("step-percent-zero", with_spec(autoscaling__scaleUp={"stabilizationSeconds": 0, "maxStepPercent": 0, "maxStepPods": 4}), "maxStepPercent"),
    ("stabilization-too-long", with_spec(autoscaling__scaleDown={"stabilizationSeconds": 7200, "maxStepPercent": 50, "maxStepPods": 1}), "stabilizationSeconds"),
    ("tolerance-above-range", with_spec(autoscaling__tolerance=1.5), "tolerance"),
    ("negative-replicas", with_spec(replicas=-3), "replicas"),
    ("negative-cost", with_spec(costPerGpuHour=-1), "costPerGpuHour"),
    ("batch-size-zero", with_spec(engine__maxBatchSize=0), "maxBatchSize"),
    ("model-len-tiny", with_spec(engine__maxModelLen=4), "maxModelLen"),
    ("vllm-without-gpu", with_spec(engine__type="vllm", resources__gpus=0), "gpus"),
    ("pvc-and-size-limit", with_spec(modelCache={"persistentVolumeClaim": "cache", "sizeLimit": "10Gi"}), "sizeLimit"),
    ("bad-pvc-name", with_spec(modelCache={"persistentVolumeClaim": "Not_A_Name"}), "persistentVolumeClaim"),
    ("secret-without-key", with_spec(secrets={"huggingFaceToken": {"name": "hf"}}), "key"),
    ("bad-toleration-operator", with_spec(scheduling={"tolerations": [{"key": "gpu", "operator": "Maybe"}]}), "operator"),
    ("args-not-strings", with_spec(engine__args=[1, 2]), "args"),
    ("env-bad-name", with_spec(engine__env=[{"name": "1 BAD", "value": "x"}]), "name"),
]


@pytest.mark.parametrize(("case", "obj", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_resources_rejected_by_crd_and_model(case, obj, field):
    crd_errors = crdcheck.validate(obj, crd())
    assert crd_errors, f"{case}: the CRD schema accepted it"
    assert any(field in e for e in crd_errors), f"{case}: CRD errors do not name {field}: {crd_errors}"
    with pytest.raises(SpecError) as raised:
        parse_spec(obj["spec"])
    assert field in str(raised.value), f"{case}: model error does not name {field}: {raised.value}"


def test_at_least_twenty_distinct_invalid_cases():
    assert len({c[0] for c in INVALID}) >= 20


@pytest.mark.parametrize("garbage", [None, "spec", 42, [], {"model": None}, {"model": {"source": ["x"]}}])
def test_parse_spec_raises_only_spec_errors(garbage):
    with pytest.raises(SpecError):
        parse_spec(garbage)


def test_spec_error_message_is_condition_ready():
    with pytest.raises(SpecError) as raised:
        parse_spec({"model": {"source": "m"}, "autoscaling": {"minReplicas": 3, "maxReplicas": 1}})
    assert str(raised.value) == "spec.autoscaling: minReplicas must be less than or equal to maxReplicas"


def test_parse_status_never_raises():
    assert parse_status(None).decisions == []
    assert parse_status({"replicas": "many"}).replicas is None
    assert parse_status({"readyReplicas": 2, "futureField": 1}).ready_replicas == 2


def test_configuration_reference_is_current():
    from tokenscale.api.reference import reference_markdown

    text = reference_markdown()
    assert (REPO / "docs" / "configuration.md").read_text() == text, "docs/ is stale: run `make crds`"
    assert "`spec.autoscaling.targetTokensPerSecondPerReplica`" in text
