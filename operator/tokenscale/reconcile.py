"""The operator's I/O: read the cluster, apply the pure builders' output, write status.

`handlers.py` wires kopf to these functions; everything decided here comes from
tokenscale.desired (pure). The kubernetes client is used synchronously: kopf runs sync handlers
in its thread pool.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from tokenscale.api import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    InferenceServiceSpec,
    SpecError,
    parse_spec,
)
from tokenscale.desired import (
    MANAGED_BY,
    DesiredChildren,
    conditions,
    differences,
    operator_children,
    selector_string,
)
from tokenscale.desired.drift import overlay, owned_by
from tokenscale.desired.pods import PodHealth
from tokenscale.engines import adapter_for
from tokenscale.kube import MERGE_PATCH, ApiException, ChildApi, Kube, api_error_message, is_missing
from tokenscale.settings import Settings

log = logging.getLogger("tokenscale.reconcile")


def connect(settings: Settings) -> Kube:
    """A client for the operator's settings, its pool sized for the tick's writers and kopf's threads."""
    return Kube.connect(settings.kubeconfig, settings.context, pool_size=2 * settings.write_concurrency + 8)


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _adopt(child: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    child = dict(child)
    meta = dict(child["metadata"])
    meta["ownerReferences"] = [owner_reference(owner)]
    child["metadata"] = meta
    return child


# Paths the API server dropped or rewrote right after our own replace, per child and desired
# state: drift there cannot be repaired, and trying on every watch event would be a hot loop.
_UNKEPT: dict[tuple[str, str, str, str], set[str]] = {}


class ForeignObjectError(Exception):
    """A child's name is taken by an object this InferenceService does not own."""


def _foreign(live: dict[str, Any], owner: dict[str, Any]) -> bool:
    """Owned by another controller, or never created by tokenscale: not ours to overwrite."""
    meta = live.get("metadata") or {}
    controllers = [ref for ref in meta.get("ownerReferences") or [] if ref.get("controller")]
    if controllers:
        return all(ref.get("uid") != owner["metadata"]["uid"] for ref in controllers)
    return (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") != MANAGED_BY


def _drift(desired: dict[str, Any], live: dict[str, Any]) -> tuple[list[str], dict[str, Any], tuple[str, ...]]:
    meta = desired["metadata"]
    wanted = {"metadata": {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]},
              "spec": desired["spec"]}
    memory = (desired["kind"], meta["namespace"], meta["name"], json.dumps(wanted, sort_keys=True))
    drift = [path for path in differences(wanted, live) if path not in _UNKEPT.get(memory, ())]
    return drift, wanted, memory


def drifted(owner: dict[str, Any], desired: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """Where a child as watched differs from what the owner wants (no request: the watch's copy)."""
    return _drift(_adopt(desired, owner), live)[0]


def apply_child(kube: Kube, owner: dict[str, Any], desired: dict[str, Any], *, create_first: bool = False,
                ) -> tuple[str, dict[str, Any] | None]:
    """Create or repair one child. Returns what happened (created, updated or unchanged) and the
    child as stored. `create_first` (a new InferenceService): create, and read only on a 409."""
    children = ChildApi(kube, desired["kind"])
    namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    desired = _adopt(desired, owner)
    for attempt in range(3):  # another writer (a concurrent handler) may win a race: read again
        live = None if create_first and attempt == 0 else children.read(namespace, name)
        try:
            if live is None:
                return "created", children.create(namespace, desired)
            if _foreign(live, owner):
                raise ForeignObjectError(f"{desired['kind']} {namespace}/{name} exists and is not managed by "
                                         "this InferenceService; rename one of them or delete it")
            drift, wanted, memory = _drift(desired, live)
            if not drift:
                return "unchanged", live
            # Replace the whole spec: a merge patch could not remove a container or env var
            # someone added by hand. Labels and annotations others set are kept.
            body = dict(live)
            body.pop("status", None)
            meta = dict(live["metadata"])
            meta["labels"] = {**(meta.get("labels") or {}), **desired["metadata"]["labels"]}
            meta["ownerReferences"] = desired["metadata"]["ownerReferences"]
            body["metadata"], body["spec"] = meta, overlay(live.get("spec") or {}, desired["spec"])
            stored = children.replace(namespace, name, body)
            log.info("repaired %s %s/%s: %s", desired["kind"], namespace, name, ", ".join(drift[:5]))
            unkept = differences(wanted, stored)
            if unkept:  # e.g. a field this API server version does not know: stop fighting over it
                log.warning("the API server does not keep %s of %s %s/%s; ignoring it from now on",
                            ", ".join(unkept[:5]), desired["kind"], namespace, name)
                _UNKEPT[memory] = set(unkept)
            return "updated", stored
        except ApiException as error:
            # 409: someone wrote first (or it exists already); 404 on a replace: deleted meanwhile.
            # Read again. A 404 on create means the API itself is missing (e.g. no PodMonitor CRD).
            if error.status not in (409, 404) or (error.status == 404 and live is None):
                raise
    raise RuntimeError(f"{desired['kind']} {namespace}/{name} kept changing under the operator")


def remove_child(kube: Kube, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
    """Delete a child that should no longer exist, only if this service owns it."""
    children = ChildApi(kube, kind)
    live = children.read(namespace, name)
    if live is None or not owned_by(live, owner_uid):
        return False
    return children.delete(namespace, name)


@dataclass(frozen=True)
class Applied:
    actions: dict[str, str]  # kind -> created / updated / unchanged / deleted
    deployment: dict[str, Any] | None
    warnings: tuple[str, ...] = ()


_DESIRED: dict[tuple[Any, ...], DesiredChildren] = {}  # (uid, generation, replicas) -> the children built


def desired_children(settings: Settings, owner: dict[str, Any], spec: InferenceServiceSpec,
                     current_replicas: int | None) -> DesiredChildren:
    """The children one generation of a spec asks for (remembered: every watch event of a child
    compares against them, and building them is the costly part of that comparison)."""
    meta = owner["metadata"]
    key = (meta.get("uid"), meta.get("generation"), current_replicas, settings.default_server_image)
    if meta.get("uid") and key in _DESIRED:
        return _DESIRED[key]
    if len(_DESIRED) > 2_000:  # bounded: a fleet's worth would cost tens of MB per thousand services
        _DESIRED.clear()
    _DESIRED[key] = wanted = operator_children(meta["name"], meta["namespace"], spec, settings,
                                                     current_replicas=current_replicas)
    return wanted


def realise(kube: Kube, settings: Settings, owner: dict[str, Any], spec: InferenceServiceSpec, *,
            new: bool = False, watched: dict[str, Any] | None = None) -> Applied:
    """Make the children of one InferenceService match its spec.

    `new`: the InferenceService was just created, so its children most likely do not exist:
    each is created at once (one request) and read only if that meets a 409. Otherwise each is
    read and repaired where it drifted. `watched` (the Deployment as watched, on a resume where
    the Deployment and the Service exist and the spec was handled before): those two are left to
    the watch-driven drift checks, which compare the watched copies without a request.
    """
    namespace, name, uid = owner["metadata"]["namespace"], owner["metadata"]["name"], owner["metadata"]["uid"]
    deployments = ChildApi(kube, "Deployment")
    if watched is not None:
        live, current = watched, (watched.get("spec") or {}).get("replicas")
    else:
        live = None if new else deployments.read(namespace, name)
        current = (live.get("spec") or {}).get("replicas") if live else None
    wanted = desired_children(settings, owner, spec, current)
    if watched is not None:
        deployment, actions = watched, {"Deployment": "unchanged", "Service": "unchanged"}
    else:
        action, deployment = apply_child(kube, owner, wanted.deployment, create_first=new)
        actions = {"Deployment": action, "Service": apply_child(kube, owner, wanted.service, create_first=new)[0]}
    warnings: list[str] = []
    if watched is not None:
        # A resume with nothing changed since: the PDB and PodMonitor were applied with this spec
        # and are repaired on its next change (they are not watched: checking each would cost a
        # read per service at every start).
        return Applied(actions=actions, deployment=deployment, warnings=())
    for kind, desired in (("PodDisruptionBudget", wanted.pod_disruption_budget),):
        if desired is not None:
            actions[kind] = apply_child(kube, owner, desired, create_first=new)[0]
        elif not new and remove_child(kube, kind, namespace, name, uid):
            actions[kind] = "deleted"
    try:
        if wanted.pod_monitor is not None:
            actions["PodMonitor"] = apply_child(kube, owner, wanted.pod_monitor, create_first=new)[0]
        elif not new and remove_child(kube, "PodMonitor", namespace, name, uid):
            actions["PodMonitor"] = "deleted"
    except ApiException as error:
        if error.status != 404:
            raise
        # The Prometheus Operator's CRDs are not installed: serve anyway, and say so.
        warnings.append("PodMonitor not created: the monitoring.coreos.com/v1 API is not installed")
    return Applied(actions=actions, deployment=deployment, warnings=tuple(warnings))


# --- the InferenceService itself ------------------------------------------------------------


def service_path(namespace: str, name: str, subresource: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    return f"{path}/{subresource}" if subresource else path


def read_service(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return kube.request("GET", service_path(namespace, name))
    except ApiException as error:
        if is_missing(error):
            return None
        raise


def write_status(kube: Kube, owner: dict[str, Any], status: dict[str, Any], *, trust_owner: bool = False) -> bool:
    """Merge `status` into the object's status when it changes anything (never touches spec).

    Optimistic concurrency: the patch carries the resourceVersion it was computed against and
    is redone on a conflict; conditions are merged by type with the live ones, so the
    reconciler and the autoscaler never drop each other's conditions. `trust_owner`: `owner`
    is recent (the body kopf passed, or the watched copy): compare with it and patch at its
    resourceVersion without a GET first; a 409 says it was not, and the next attempt reads.
    """
    namespace, name, uid = owner["metadata"]["namespace"], owner["metadata"]["name"], owner["metadata"].get("uid")
    for attempt in range(5):
        usable = trust_owner and attempt == 0 and owner["metadata"].get("resourceVersion")
        fresh = owner if usable else read_service(kube, namespace, name)
        if fresh is None or (uid and fresh["metadata"].get("uid") != uid):
            return False  # deleted (or replaced by a namesake) meanwhile
        current = fresh.get("status") or {}
        patch = dict(status)
        if "conditions" in status:
            patch["conditions"] = conditions.merge_conditions(current.get("conditions"), status["conditions"])
        if not differences(patch, current):
            return False
        body = {"metadata": {"resourceVersion": fresh["metadata"]["resourceVersion"]}, "status": patch}
        try:
            kube.request("PATCH", service_path(namespace, name, "status"), body, content_type=MERGE_PATCH)
            return True
        except ApiException as error:
            if is_missing(error):
                return False
            if error.status != 409:
                raise
    raise RuntimeError(f"the status of {namespace}/{name} kept changing under the operator")


def endpoint(settings: Settings, owner: dict[str, Any], spec: InferenceServiceSpec) -> str:
    meta = owner["metadata"]
    port = adapter_for(spec.engine.type).port
    return conditions.endpoint_url(meta["name"], meta["namespace"], port, settings.cluster_domain)


def observed_status(settings: Settings, owner: dict[str, Any], spec: InferenceServiceSpec,
                    deployment: dict[str, Any] | None, pods: PodHealth | None = None) -> dict[str, Any]:
    meta = owner["metadata"]
    status = owner.get("status") or {}
    return conditions.workload_status(
        deployment, generation=meta.get("generation"), conditions=status.get("conditions"),
        endpoint=endpoint(settings, owner, spec), selector=selector_string(meta["name"]), pod_health=pods)


_PARSED: dict[tuple[str, int], InferenceServiceSpec] = {}


def parse(owner: dict[str, Any]) -> InferenceServiceSpec:
    """The spec, or SpecError with a condition-ready message (a valid one is remembered per
    generation: the spec of a generation never changes)."""
    meta = owner.get("metadata") or {}
    key = (meta.get("uid"), meta.get("generation"))
    if key[0] and key[1] is not None and key in _PARSED:
        return _PARSED[key]
    spec = parse_spec(owner.get("spec"), name=meta.get("name"))
    if key[0] and key[1] is not None:
        if len(_PARSED) > 2_000:
            _PARSED.clear()
        _PARSED[key] = spec
    return spec


__all__ = ["Kube", "Applied", "SpecError", "api_error_message", "connect", "desired_children", "drifted", "endpoint",
           "observed_status", "parse", "read_service", "realise", "write_status"]
