"""The InferenceService API: the models, the generated CRD, and the two kept in step."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import yaml

from tests.conftest import REPO
from tests.support import crdcheck
from tokenscale.api import InferenceService, InferenceServiceSpec, SpecError, parse_spec, parse_status
from tokenscale.api.crd import crd, crd_yaml
from tokenscale.api.models import name_problems

CRD_FILE = REPO / "crds" / "tokenscale.io_inferenceservices.yaml"
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
# Pages that show an InferenceService a reader may copy (found by their ```yaml blocks).
DOCS_WITH_EXAMPLES = [
    page for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    if re.search(r"```yaml\n[^`]*kind: InferenceService", page.read_text())
]

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
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Engine", "Model", "Ready", "Replicas", "Desired", "Tokens/s", "Queue", "Age"} <= set(columns)
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'


def test_crd_passes_the_api_servers_creation_checks():
    """Stands in for kube-apiserver's checks on CREATE of the CRD: a structural schema, CEL rules that
    compile and read only bounded strings and lists, and every `default` literal valid, as written
    (no nested defaulting), against its node's schema and against every x-kubernetes-validations rule
    of its node and the nodes below it. The real API server refused the CRD on exactly that last check."""
    assert crdcheck.creation_errors(crd()) == []
    assert crdcheck.creation_errors(yaml.safe_load(CRD_FILE.read_text())) == []


def test_the_creation_check_refuses_what_the_api_server_refused():
    """The CRD as it was (`default: {}` on spec.autoscaling, whole-block defaults for the behaviour):
    the check reports what kube-apiserver v1.36 said, rule by rule."""
    old = copy.deepcopy(crd())
    autoscaling = crdcheck.version_schema(old)["properties"]["spec"]["properties"]["autoscaling"]
    autoscaling["default"] = {}
    errors = crdcheck.creation_errors(old)
    assert len(errors) == 3, errors
    assert all(e.startswith("spec.autoscaling.default: ") for e in errors)
    assert "minReplicas" in errors[0] and "minReplicas must be less than or equal to maxReplicas" in errors[0]
    assert "onMetricsUnavailable: ScaleTo needs fallbackReplicas" in errors[2]


def test_every_default_is_written_out_in_full():
    """An object's default is the model's own default, nested defaults included: the literal the API
    server checks at CRD creation is the object a resource gets."""
    schema = crdcheck.version_schema(crd())
    for path, node in crdcheck.walk(schema):
        if isinstance(node.get("default"), dict):
            assert crdcheck.apply_defaults(copy.deepcopy(node["default"]), node) == node["default"], path


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


def test_the_docs_show_inference_services():
    assert {p.name for p in DOCS_WITH_EXAMPLES} >= {"README.md", "demo.md"}


def inference_services(path: Path) -> list[dict]:
    """The InferenceServices of a YAML file, or of the ```yaml blocks of a Markdown page."""
    text = path.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if path.suffix == ".md" else [text]
    docs = [doc for block in blocks for doc in yaml.safe_load_all(block)]
    return [doc for doc in docs if isinstance(doc, dict) and doc.get("kind") == "InferenceService"]


@pytest.mark.parametrize("path", EXAMPLES + DOCS_WITH_EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path):
    """Stands in for kube-apiserver on CREATE of each example: structural defaulting, then schema and
    CEL validation; and the operator's model accepts the same spec."""
    services = inference_services(path)
    assert services, f"{path.name} shows no InferenceService"
    for obj in services:
        assert crdcheck.validate(obj, crd()) == []
        parse_spec(obj["spec"])
        InferenceService.model_validate(obj)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("scaleDown", {"stabilizationSeconds": 60, "maxStepPercent": 50, "maxStepPods": 1}),
        ("scaleUp", {"stabilizationSeconds": 60, "maxStepPercent": 100, "maxStepPods": 4}),
    ],
)
def test_partial_behaviour_blocks_take_each_fields_default(block, expected):
    """`scaleDown: {stabilizationSeconds: 60}` (refused by the real API server with "maxStepPercent:
    Required value") is whole after defaulting, and the model reads the same service."""
    obj = with_spec(**{f"autoscaling__{block}": {"stabilizationSeconds": 60}})
    assert crdcheck.validate(obj, crd()) == []
    defaulted = crdcheck.apply_defaults(copy.deepcopy(obj), crdcheck.version_schema(crd()))
    assert defaulted["spec"]["autoscaling"][block] == expected
    from_model = parse_spec(obj["spec"]).autoscaling.model_dump(by_alias=True, mode="json")[block]
    assert from_model == expected
    assert parse_spec(obj["spec"]) == parse_spec(defaulted["spec"])


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
    ("step-percent-zero", with_spec(autoscaling__scaleUp={"maxStepPercent": 0}), "maxStepPercent"),
    ("stabilization-too-long", with_spec(autoscaling__scaleDown={"stabilizationSeconds": 7200}), "stabilizationSeconds"),
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
    ("image-not-a-reference", with_spec(engine__image="not an image ref"), "image"),
    ("image-uppercase-repository", with_spec(engine__image="Vllm/Vllm-Openai:latest"), "image"),
    ("source-shell-metacharacters", with_spec(model__source="x; rm -rf /"), "source"),
    ("source-with-space", with_spec(model__source="org/my model"), "source"),
    ("source-looks-like-a-flag", with_spec(model__source="--trust-remote-code"), "source"),
    ("partial-block-out-of-range", with_spec(autoscaling__scaleDown={"maxStepPods": 0}), "maxStepPods"),
]


def named(name: str) -> dict:
    obj = copy.deepcopy(VALID)
    obj["metadata"]["name"] = name
    return obj


# (id, name, what the CRD and the model must say)
BAD_NAMES = [
    ("70-characters", "a" * 70, "at most 63 characters"),
    ("64-characters", "a" * 64, "at most 63 characters"),
    ("starts-with-a-digit", "8b-llama", "start with a lowercase letter"),
    ("has-a-dot", "llama.8b", "DNS-1035 label"),
]


@pytest.mark.parametrize(("case", "name", "why"), BAD_NAMES, ids=[c[0] for c in BAD_NAMES])
def test_names_that_cannot_name_the_children_are_rejected_with_why(case, name, why):
    """The API server itself would take these names (DNS subdomains up to 253), then refuse the
    Service and the pods' label values; the CRD's root rule refuses them first, saying why."""
    errors = crdcheck.validate(named(name), crd())
    assert any("metadata.name" in e and why in e for e in errors), errors
    with pytest.raises(pydantic.ValidationError) as raised:
        InferenceService.model_validate(named(name))
    assert "metadata.name" in str(raised.value) and why in str(raised.value)
    assert any(why in problem for problem in name_problems(name))


@pytest.mark.parametrize("name", ["a", "llama-8b", "a" * 63, "qwen2-5-32b"])
def test_names_that_fit_are_accepted(name):
    assert crdcheck.validate(named(name), crd()) == []
    assert name_problems(name) == []
    InferenceService.model_validate(named(name))


@pytest.mark.parametrize(
    "image",
    [
        "vllm/vllm-openai:v0.11.0",
        "ghcr.io/huggingface/text-generation-inference:3.3.6",
        "nvcr.io/nvidia/tritonserver:25.01-trtllm-python-py3",
        "localhost:5000/team/server",
        "registry.example/tokenscale-server@sha256:" + "a" * 64,
        "busybox",
    ],
)
def test_image_references_are_accepted(image):
    assert crdcheck.validate(with_spec(engine__image=image), crd()) == []
    assert parse_spec(with_spec(engine__image=image)["spec"]).engine.image == image


@pytest.mark.parametrize(
    "source", ["meta-llama/Llama-3.1-8B-Instruct", "/models/tiny", "s3://bucket/models/llama", "Qwen/Qwen2.5-32B"]
)
def test_model_sources_are_accepted(source):
    assert crdcheck.validate(with_spec(model__source=source), crd()) == []
    assert parse_spec(with_spec(model__source=source)["spec"]).model.source == source


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


def _deployment(desired: int, ready: int, *, stuck: bool = False) -> dict:
    conditions = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                   "message": 'ReplicaSet "svc-5d8" has timed out progressing.'}] if stuck else []
    return {"metadata": {"generation": 2}, "spec": {"replicas": desired},
            "status": {"observedGeneration": 2, "replicas": desired, "readyReplicas": ready,
                       "updatedReplicas": desired, "conditions": conditions}}


def _statuses() -> dict[str, dict]:
    """Statuses as the operator's writers produce them (desired.conditions and the tick plan's reasons)."""
    from tokenscale.desired import conditions
    from tokenscale.desired.pods import PodHealth, PodProblem
    from tokenscale.desired.tickplan import condition_reason

    common = {"generation": 2, "endpoint": "http://svc.default.svc.cluster.local:8000/v1", "selector": "a=b"}
    out = {
        "no-deployment": conditions.workload_status(None, conditions=None, **common),
        "starting": conditions.workload_status(_deployment(2, 0), conditions=None, **common),
        "ready": conditions.workload_status(_deployment(2, 2), conditions=None, **common),
        "scaled-to-zero": conditions.workload_status(_deployment(0, 0), conditions=None, **common),
        "rollout-stuck": conditions.workload_status(_deployment(1, 0, stuck=True), conditions=None, **common),
        "refused-child": conditions.degraded_status(None, reason="ApplyFailed", message="x" * 40_000, generation=2),
        "crash-loop": conditions.workload_status(_deployment(1, 0), conditions=None, **common, pod_health=PodHealth.of(
            [PodProblem(pod="svc-5d8-x", state="CrashLoopBackOff", container="server", restarts=7,
                        detail="OSError: " + "y" * 500)])),
    }
    items = out["ready"]["conditions"]
    for kind, state, rule in [("MetricsAvailable", False, "hold:metricsUnavailable"),
                              ("ScalingActive", True, "Active"), ("ScalingLimited", True, "maxReplicas")]:
        items = conditions.set_condition(items, kind, state, condition_reason(rule), "", observed_generation=2)
    out["autoscaled"] = {**out["ready"], "conditions": items}
    return out


@pytest.mark.parametrize("case", sorted(_statuses()))
def test_the_operators_conditions_fit_the_crds_condition_schema(case):
    """Every writer of conditions produces what the CRD (metav1.Condition's shape) accepts on a status
    write, and reads back through the model."""
    status = _statuses()[case]
    obj = {**copy.deepcopy(VALID), "status": status}
    assert crdcheck.validate(obj, crd()) == []
    assert parse_status(status).conditions, "the conditions did not read back"


def test_conditions_have_the_standard_shape():
    conditions = crdcheck.version_schema(crd())["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) >= {"type", "status", "reason", "lastTransitionTime"}
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["reason"]["pattern"] == "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    assert item["properties"]["reason"]["maxLength"] == 1024
    assert item["properties"]["message"]["maxLength"] == 32768


@pytest.mark.parametrize(
    ("condition", "field"),
    [
        ({"type": "Ready", "status": "Maybe", "reason": "X", "message": "", "lastTransitionTime": "2026-12-02T00:00:00Z"}, "status"),
        ({"type": "Ready", "status": "True", "reason": "", "message": "", "lastTransitionTime": "2026-12-02T00:00:00Z"}, "reason"),
        ({"type": "Ready", "status": "True", "reason": "not a reason", "message": "", "lastTransitionTime": "2026-12-02T00:00:00Z"}, "reason"),
        ({"type": "Ready", "status": "True", "reason": "Fine", "message": "", "lastTransitionTime": "yesterday"}, "lastTransitionTime"),
        ({"type": "Ready", "status": "True", "message": "", "lastTransitionTime": "2026-12-02T00:00:00Z"}, "reason"),
    ],
)
def test_malformed_conditions_are_refused(condition, field):
    obj = {**copy.deepcopy(VALID), "status": {"conditions": [condition]}}
    errors = crdcheck.validate(obj, crd())
    assert any(field in e for e in errors), errors


def test_a_condition_type_appears_once():
    ready = {"type": "Ready", "status": "True", "reason": "Fine", "message": "", "lastTransitionTime": "2026-12-02T00:00:00Z"}
    obj = {**copy.deepcopy(VALID), "status": {"conditions": [ready, ready]}}
    assert any("Duplicate value" in e for e in crdcheck.validate(obj, crd()))


def test_the_operator_refuses_a_name_that_cannot_name_the_children():
    """Where the CRD is older than this rule, the operator says why (InvalidSpec) instead of the
    Deployment's bare "422 Unprocessable Entity" the real cluster showed for a 70-character name."""
    from tokenscale import reconcile

    owner = {**named("a" * 70), "metadata": {"name": "a" * 70, "namespace": "default"}}
    with pytest.raises(SpecError) as raised:
        reconcile.parse(owner)
    assert str(raised.value).startswith("metadata.name must be at most 63 characters")
    with pytest.raises(SpecError) as both:
        parse_spec({"model": {"source": "x; rm -rf /"}}, name="9lives")
    assert "spec.model.source" in str(both.value) and "DNS-1035" in str(both.value)
    assert reconcile.parse(named("llama-8b")) == parse_spec(VALID["spec"])
