"""The operator's I/O: read the cluster, apply the pure builders' output, write status.

`handlers.py` wires kopf to these functions; everything decided here comes from
tokenscale.desired (pure). The kubernetes client is used synchronously: kopf runs sync handlers
in its thread pool.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import kubernetes

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
from tokenscale.desired import MANAGED_BY, conditions, differences, operator_children, selector_string
from tokenscale.desired import Children as DesiredChildren
from tokenscale.desired.drift import overlay, owned_by
from tokenscale.desired.pods import PodHealth
from tokenscale.engines import adapter_for
from tokenscale.settings import Settings

MERGE_PATCH = "application/merge-patch+json"
log = logging.getLogger("tokenscale.reconcile")


def load_configuration(settings: Settings) -> kubernetes.client.Configuration:
    """The client configuration: --kubeconfig, else $KUBECONFIG / ~/.kube/config, else in-cluster."""
    configuration = kubernetes.client.Configuration()
    in_cluster = not settings.kubeconfig and "KUBERNETES_SERVICE_HOST" in os.environ
    if in_cluster:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    else:
        kubernetes.config.load_kube_config(config_file=settings.kubeconfig, context=settings.context,
                                           client_configuration=configuration)
    # One connection per thread that may call at once (kopf's handler threads, the tick's writers):
    # a smaller pool discards and reopens connections under load.
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0,
                                                2 * settings.write_concurrency + 8)
    return configuration


@dataclass
class Kube:
    """Typed clients over one ApiClient; each call returns the server's JSON as a dict."""

    client: kubernetes.client.ApiClient

    @classmethod
    def connect(cls, settings: Settings) -> Kube:
        return cls(kubernetes.client.ApiClient(load_configuration(settings)))

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                timeout: float | None = None) -> dict[str, Any]:
        """One request on this client's connection pool and credentials, the JSON answer as a dict.

        The generated API methods validate every argument with pydantic and build models: a few
        milliseconds of CPU per call, which 1,000 services' writes per tick cannot afford. The
        same ApiClient's auth (token refresh hooks included), TLS and pool serve this path.
        """
        client = self.client
        headers = {"Accept": "application/json", "Content-Type": content_type,
                   "User-Agent": client.user_agent}
        client.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        response = client.rest_client.request(method, client.configuration.host + path, headers=headers, body=body,
                                              _request_timeout=timeout)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise kubernetes.client.ApiException(http_resp=response)
        return json.loads(data) if data else {}

    @property
    def apps(self) -> kubernetes.client.AppsV1Api:
        return kubernetes.client.AppsV1Api(self.client)

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.client)

    @property
    def policy(self) -> kubernetes.client.PolicyV1Api:
        return kubernetes.client.PolicyV1Api(self.client)

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.client)


def _missing(error: Exception) -> bool:
    return isinstance(error, kubernetes.client.ApiException) and error.status == 404


_CHILD_PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets",
    "PodMonitor": "/apis/monitoring.coreos.com/v1/namespaces/{namespace}/podmonitors",
}


class Children:
    """Read / create / replace / delete one kind of child by name, as dicts (on `Kube.request`)."""

    def __init__(self, kube: Kube, kind: str):
        if kind not in _CHILD_PATHS:
            raise ValueError(f"unknown child kind {kind}")
        self.kind, self.kube, self.path = kind, kube, _CHILD_PATHS[kind]

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.kube.request("GET", f"{self.path.format(namespace=namespace)}/{name}")
        except kubernetes.client.ApiException as error:
            if _missing(error):
                return None
            raise

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.kube.request("POST", self.path.format(namespace=namespace), body)

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.kube.request("PUT", f"{self.path.format(namespace=namespace)}/{name}", body)

    def delete(self, namespace: str, name: str) -> bool:
        try:
            self.kube.request("DELETE", f"{self.path.format(namespace=namespace)}/{name}")
            return True
        except kubernetes.client.ApiException as error:
            if _missing(error):
                return False
            raise


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


def api_error_message(error: Exception) -> str:
    """The API server's own words for a refused request: its message and each cause's field and
    reason (a 422's details.causes), not just "422 Unprocessable Entity"."""
    if not isinstance(error, kubernetes.client.ApiException):
        return f"{type(error).__name__}: {error}"
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        body = None
    if not isinstance(body, dict) or not body.get("message"):
        return f"{error.status} {error.reason}"
    message = str(body["message"])
    causes = ((body.get("details") or {}).get("causes")) or []
    # A 422's message already lists "field: message" for each cause; add the causes it leaves out.
    extra = [f"{c.get('field', '')}: {c.get('reason', '')}: {c.get('message', '')}".strip(": ")
             for c in causes if isinstance(c, dict)
             and not (c.get("field") and f"{c['field']}: " in message) and c.get("message", "") not in message]
    if extra:
        message = f"{message} ({'; '.join(extra)})"
    return f"{error.status} {body.get('reason') or error.reason}: {message}"


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
    children = Children(kube, desired["kind"])
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
        except kubernetes.client.ApiException as error:
            # 409: someone wrote first (or it exists already); 404 on a replace: deleted meanwhile.
            # Read again. A 404 on create means the API itself is missing (e.g. no PodMonitor CRD).
            if error.status not in (409, 404) or (error.status == 404 and live is None):
                raise
    raise RuntimeError(f"{desired['kind']} {namespace}/{name} kept changing under the operator")


def remove_child(kube: Kube, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
    """Delete a child that should no longer exist, only if this service owns it."""
    children = Children(kube, kind)
    live = children.read(namespace, name)
    if live is None or not owned_by(live, owner_uid):
        return False
    return children.delete(namespace, name)


@dataclass(frozen=True)
class Outcome:
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
            new: bool = False, watched: dict[str, Any] | None = None) -> Outcome:
    """Make the children of one InferenceService match its spec.

    `new`: the InferenceService was just created, so its children most likely do not exist:
    each is created at once (one request) and read only if that meets a 409. Otherwise each is
    read and repaired where it drifted. `watched` (the Deployment as watched, on a resume where
    the Deployment and the Service exist and the spec was handled before): those two are left to
    the watch-driven drift checks, which compare the watched copies without a request.
    """
    namespace, name, uid = owner["metadata"]["namespace"], owner["metadata"]["name"], owner["metadata"]["uid"]
    deployments = Children(kube, "Deployment")
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
        return Outcome(actions=actions, deployment=deployment, warnings=())
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
    except kubernetes.client.ApiException as error:
        if error.status != 404:
            raise
        # The Prometheus Operator's CRDs are not installed: serve anyway, and say so.
        warnings.append("PodMonitor not created: the monitoring.coreos.com/v1 API is not installed")
    return Outcome(actions=actions, deployment=deployment, warnings=tuple(warnings))


# --- the InferenceService itself ------------------------------------------------------------


def service_path(namespace: str, name: str, subresource: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    return f"{path}/{subresource}" if subresource else path


def read_service(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return kube.request("GET", service_path(namespace, name))
    except kubernetes.client.ApiException as error:
        if _missing(error):
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
        except kubernetes.client.ApiException as error:
            if _missing(error):
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


__all__ = ["Kube", "Outcome", "SpecError", "api_error_message", "desired_children", "drifted", "endpoint", "load_configuration",
           "observed_status", "parse", "read_service", "realise", "write_status"]
