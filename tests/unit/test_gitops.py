"""docs/gitops.md: the Argo CD health check runs in Lua 5.1 (Argo CD's dialect) on real statuses, the
Flux healthCheckExprs run in CEL the way Flux's status evaluator runs them, both tools reach the same
verdict, and every YAML snippet in the page parses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from tokenscale.api.models import InferenceServiceStatus

lua51 = pytest.importorskip("lupa.lua51")

GITOPS = Path(__file__).resolve().parents[2] / "docs" / "gitops.md"
HEALTH_KEY = "resource.customizations.health.tokenscale.io_InferenceService"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", GITOPS.read_text(), flags=re.S)


def health_script() -> str:
    (block,) = [b for b in yaml_blocks() if HEALTH_KEY in b]
    return yaml.safe_load(block)[HEALTH_KEY]


def to_lua(runtime: Any, value: Any) -> Any:
    """A JSON value as Argo CD hands it to Lua: objects and arrays as tables, arrays from 1."""
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> dict[str, Any]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    check = runtime.eval(f"function(obj)\n{health_script()}\nend")
    return dict(check(to_lua(runtime, obj)))


def service(generation: int = 2, **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "tokenscale.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "llama", "namespace": "ml", "generation": generation},
        "spec": {"model": {"source": "meta-llama/Llama-3.1-8B-Instruct"}},
    }
    if status:
        # Through the API model: the field names are the ones the operator writes.
        obj["status"] = InferenceServiceStatus.model_validate(status).model_dump(
            by_alias=True, exclude_none=True, mode="json"
        )
    return obj


def condition(kind: str, status: str, reason: str = "AsExpected", message: str = "") -> dict[str, Any]:
    """A condition as the operator writes it (metav1.Condition's shape)."""
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-02T08:00:00Z", "observedGeneration": 2}


def test_no_status_yet_is_progressing():
    assert health(service())["status"] == "Progressing"


def test_ready_is_healthy():
    result = health(service(observedGeneration=2, conditions=[
        condition("Ready", "True", "AllReplicasReady", "2/2 replicas ready"),
        condition("Degraded", "False", "AsExpected"),
    ]))
    assert result == {"status": "Healthy", "message": "2/2 replicas ready"}


def test_degraded_wins_with_the_operators_message():
    result = health(service(observedGeneration=2, conditions=[
        condition("Ready", "False", "NoReadyReplicas", "0/1 replicas ready"),
        condition("Degraded", "True", "InvalidSpec", "spec.engine.type: tgi needs resources.gpus >= 1"),
    ]))
    assert result == {"status": "Degraded", "message": "spec.engine.type: tgi needs resources.gpus >= 1"}


def test_starting_replicas_are_progressing_with_the_ready_message():
    result = health(service(observedGeneration=2, conditions=[
        condition("Ready", "False", "ReplicasStarting", "0/1 replicas ready (loading the model)"),
    ]))
    assert result == {"status": "Progressing", "message": "0/1 replicas ready (loading the model)"}


def test_a_spec_the_operator_has_not_acted_on_is_progressing_even_if_ready():
    result = health(service(generation=3, observedGeneration=2, conditions=[condition("Ready", "True")]))
    assert result["status"] == "Progressing" and "latest spec" in result["message"]


def test_scaled_to_zero_is_healthy():
    result = health(service(observedGeneration=2, phase="Idle", replicas=0, conditions=[
        condition("Ready", "False", "ScaledToZero", "no replicas until demand returns"),
    ]))
    assert result["status"] == "Healthy"


# --- Flux ------------------------------------------------------------------------------------------


def flux_expressions() -> dict[str, str]:
    docs = [doc for block in yaml_blocks() for doc in yaml.safe_load_all(block)]
    (exprs,) = [e for doc in docs if doc.get("kind") == "Kustomization"
                for e in doc["spec"].get("healthCheckExprs", [])]
    assert (exprs["apiVersion"], exprs["kind"]) == ("tokenscale.io/v1alpha1", "InferenceService")
    return exprs


def flux_health(obj: dict[str, Any]) -> str:
    """Flux's CEL status evaluator (fluxcd/pkg runtime/cel, RFC 0009): an observedGeneration behind
    metadata.generation is InProgress; then inProgress, failed, current, in that order, the first true
    one decides; none true is InProgress. The object's top-level fields are the variables. An
    expression that cannot evaluate is an error, on which Flux keeps waiting."""
    status = obj.get("status") or {}
    if "observedGeneration" in status and status["observedGeneration"] != obj["metadata"].get("generation"):
        return "InProgress"
    env = celpy.Environment()
    activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    for key, verdict in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if key not in flux_expressions():
            continue
        try:
            result = env.program(env.compile(flux_expressions()[key])).evaluate(activation)
        except celpy.CELEvalError:
            return "Error"
        if isinstance(result, Exception):
            return "Error"
        if bool(result):
            return verdict
    return "InProgress"


def kstatus_generic(obj: dict[str, Any]) -> str:
    """kstatus' rules for a custom resource (cli-utils checkGenericProperties), what `wait: true`
    applies when no expressions are given."""
    status = obj.get("status") or {}
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    if "observedGeneration" in status and status["observedGeneration"] != obj["metadata"].get("generation"):
        return "InProgress"
    for item in status.get("conditions", []):
        if item["type"] == "Reconciling" and item["status"] == "True":
            return "InProgress"
        if item["type"] == "Stalled" and item["status"] == "True":
            return "Failed"
    return "Current"


STATES = {
    "not acted on": service(generation=3, observedGeneration=2, conditions=[condition("Ready", "True", "ReplicasReady")]),
    "starting": service(observedGeneration=2, conditions=[
        condition("Ready", "False", "NoReplicaReady", "0/1 replicas ready (loading the model can take minutes)"),
        condition("Degraded", "False", "AsExpected")]),
    "ready": service(observedGeneration=2, conditions=[
        condition("Ready", "True", "ReplicasReady", "2/2 replicas ready"), condition("Degraded", "False", "AsExpected")]),
    "degraded": service(observedGeneration=2, phase="Degraded", conditions=[
        condition("Ready", "False", "NoReplicaReady", "0/1 replicas ready"),
        condition("Degraded", "True", "ApplyFailed", "applying the serving workload failed")]),
    "scaled to zero": service(observedGeneration=2, phase="Idle", replicas=0, conditions=[
        condition("Ready", "False", "ScaledToZero", "no replicas (scaled to zero)")]),
}
ARGO_TO_FLUX = {"Healthy": "Current", "Degraded": "Failed", "Progressing": "InProgress"}


@pytest.mark.parametrize("state", sorted(STATES))
def test_flux_and_argo_cd_reach_the_same_verdict(state):
    obj = STATES[state]
    assert flux_health(obj) == ARGO_TO_FLUX[health(obj)["status"]]


def test_flux_verdicts():
    verdicts = {state: flux_health(obj) for state, obj in STATES.items()}
    assert verdicts == {"not acted on": "InProgress", "starting": "InProgress", "ready": "Current",
                        "degraded": "Failed", "scaled to zero": "Current"}


def test_before_the_first_status_flux_waits():
    assert flux_health(service()) in ("InProgress", "Error")


def test_kstatus_alone_would_call_a_degraded_or_starting_service_current():
    """Why the page gives healthCheckExprs: kstatus reads no Ready or Degraded condition."""
    assert kstatus_generic(STATES["degraded"]) == "Current"
    assert kstatus_generic(STATES["starting"]) == "Current"
    assert kstatus_generic(STATES["not acted on"]) == "InProgress"


def test_every_yaml_snippet_parses_and_names_its_kind():
    blocks = yaml_blocks()
    assert len(blocks) >= 4
    for block in blocks:
        for doc in yaml.safe_load_all(block):
            assert isinstance(doc, dict)
            if HEALTH_KEY not in doc:
                assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
