"""Status conditions and the workload status of an InferenceService (pure).

`set_condition` is the one way to change a condition: lastTransitionTime moves only when the
status flips, so `kubectl describe` shows since when a service is Ready or Degraded. The
autoscaler adds MetricsAvailable / ScalingActive / ScalingLimited through the same helper.
"""

from __future__ import annotations

from typing import Any

from tokenscale.api.models import CONDITION_MESSAGE_MAX_LENGTH
from tokenscale.api.wire import rfc3339

from .pods import FAILING_WAITING, OOM_KILLED, STARTUP_PROBE_FAILED, PodHealth

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
# Degraded reasons a successful reconcile clears.
RECOVERABLE = ("RolloutStuck", "AsExpected", "InvalidSpec", "ApplyFailed", "NameConflict",
               *FAILING_WAITING, OOM_KILLED, STARTUP_PROBE_FAILED)


def _fit(message: str) -> str:
    """The CRD (as metav1.Condition) caps a message; a longer one would make the status write fail."""
    if len(message) <= CONDITION_MESSAGE_MAX_LENGTH:
        return message
    return message[: CONDITION_MESSAGE_MAX_LENGTH - 3] + "..."


def get_condition(conditions: list[dict[str, Any]] | None, kind: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == kind), None)


def condition_is(conditions: list[dict[str, Any]] | None, kind: str, status: bool | str, reason: str,
                 message: str = "") -> bool:
    """`kind` already reads `status`, `reason`, `message`: setting it again would change nothing
    worth a write or an event."""
    text = status if isinstance(status, str) else ("True" if status else "False")
    current = get_condition(conditions, kind) or {}
    return (current.get("status"), current.get("reason"), current.get("message")) == (text, reason, _fit(message))


def set_condition(conditions: list[dict[str, Any]] | None, kind: str, status: bool | str, reason: str,
                  message: str = "", *, observed_generation: int | None = None,
                  at: str | None = None) -> list[dict[str, Any]]:
    """A new list with `kind` set; the order of the others is kept."""
    text = status if isinstance(status, str) else ("True" if status else "False")
    result = [dict(c) for c in conditions or []]  # flat dicts of strings: a shallow copy is a copy
    old = get_condition(result, kind)
    new: dict[str, Any] = {"type": kind, "status": text, "reason": reason, "message": _fit(message)}
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    new["lastTransitionTime"] = (
        old["lastTransitionTime"] if old and old.get("status") == text and old.get("lastTransitionTime")
        else at or rfc3339()
    )
    if old is None:
        result.append(new)
    else:
        result[result.index(old)] = new
    return result


def merge_conditions(current: list[dict[str, Any]] | None,
                     updates: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """`current` with each condition in `updates` replacing the one of its type (others kept),
    so writers of different conditions (reconciler, autoscaler) never drop each other's."""
    result = [dict(c) for c in current or []]
    for update in updates or []:
        old = get_condition(result, update.get("type", ""))
        if old is None:
            result.append(dict(update))
        else:
            result[result.index(old)] = dict(update)
    return result


def workload_status(deployment: dict[str, Any] | None, *, generation: int | None,
                    conditions: list[dict[str, Any]] | None, endpoint: str, selector: str,
                    at: str | None = None, pod_health: PodHealth | None = None) -> dict[str, Any]:
    """replicas, readiness, phase and Ready/Progressing/Degraded from the live Deployment and the
    problems of its pods (a pod that cannot start is named, not shown as loading)."""
    at = at or rfc3339()
    health = pod_health or PodHealth()
    if deployment is None:
        conditions = set_condition(conditions, READY, False, "DeploymentMissing",
                                   "the serving Deployment does not exist yet", observed_generation=generation, at=at)
        conditions = set_condition(conditions, PROGRESSING, True, "Creating", "creating the serving Deployment",
                                   observed_generation=generation, at=at)
        return {"phase": "Pending", "replicas": 0, "readyReplicas": 0, "observedGeneration": generation,
                "selector": selector, "endpoint": endpoint, "conditions": conditions}

    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    pods = int(status.get("replicas") or 0)
    rolled_out = (status.get("observedGeneration") or 0) >= ((deployment.get("metadata") or {}).get("generation") or 0)
    stuck = next((c for c in status.get("conditions") or []
                  if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"), None)

    if desired == 0:
        phase = "Idle"
        conditions = set_condition(conditions, READY, False, "ScaledToZero", "no replicas (scaled to zero)",
                                   observed_generation=generation, at=at)
    elif ready > 0:
        phase = "Ready" if ready >= desired and updated >= desired and rolled_out else "Progressing"
        conditions = set_condition(conditions, READY, True, "ReplicasReady",
                                   f"{ready}/{desired} replicas ready", observed_generation=generation, at=at)
    elif health.failing:
        phase = "Degraded"
        conditions = set_condition(conditions, READY, False, health.reason, health.message,
                                   observed_generation=generation, at=at)
    else:
        phase = "Progressing"
        conditions = set_condition(conditions, READY, False, "NoReplicaReady",
                                   f"0/{desired} replicas ready (loading the model can take minutes)",
                                   observed_generation=generation, at=at)

    if desired > 0 and (not rolled_out or updated < desired or ready < desired or pods > desired):
        conditions = set_condition(conditions, PROGRESSING, True, "RollingOut",
                                   f"{updated}/{desired} updated, {ready}/{desired} ready",
                                   observed_generation=generation, at=at)
    else:
        conditions = set_condition(conditions, PROGRESSING, False, "Stable", "the rollout is complete",
                                   observed_generation=generation, at=at)

    if stuck is not None:
        phase = "Degraded"
        conditions = set_condition(conditions, DEGRADED, True, "RolloutStuck", stuck.get("message", ""),
                                   observed_generation=generation, at=at)
    elif health.failing and desired > 0:
        phase = "Degraded"
        conditions = set_condition(conditions, DEGRADED, True, health.reason, health.message,
                                   observed_generation=generation, at=at)
    else:
        current = get_condition(conditions, DEGRADED)
        # A spec that failed before (InvalidSpec, ApplyFailed) has just been realised: clear it.
        if current is None or current.get("reason") in RECOVERABLE:
            conditions = set_condition(conditions, DEGRADED, False, "AsExpected", "",
                                       observed_generation=generation, at=at)
        elif current.get("status") == "True":
            phase = "Degraded"
    return {"phase": phase, "replicas": pods, "readyReplicas": ready, "desiredReplicas": desired,
            "observedGeneration": generation, "selector": selector, "endpoint": endpoint,
            "conditions": conditions}


def degraded_status(conditions: list[dict[str, Any]] | None, *, reason: str, message: str,
                    generation: int | None, at: str | None = None) -> dict[str, Any]:
    """The status of a spec that cannot be realised: Degraded=True with the reason, nothing else moves."""
    conditions = set_condition(conditions, DEGRADED, True, reason, message, observed_generation=generation, at=at)
    return {"phase": "Degraded", "observedGeneration": generation, "conditions": conditions}


def endpoint_url(name: str, namespace: str, port: int, cluster_domain: str = "cluster.local") -> str:
    return f"http://{name}.{namespace}.svc.{cluster_domain}:{port}/v1"
