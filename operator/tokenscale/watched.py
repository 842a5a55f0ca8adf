"""What the autoscaler's tick reads, kept from kopf's watch events (no request per tick).

`WatchedState` is an informer-style cache: slim views of every InferenceService and serving
Deployment, which serving Services exist, and only the serving pods that cannot start or cannot
be scheduled. handlers.py feeds it from kopf's watch streams; it is read and changed on kopf's
event loop only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenscale.api import API_VERSION, KIND
from tokenscale.desired import SERVICE_LABEL
from tokenscale.desired.pods import PodHealth, PodProblem
from tokenscale.desired.routing import activation_requested_at

ServiceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class ServiceView:
    """What the tick needs of one InferenceService (not the whole object: 10,000 of them fit)."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    resource_version: str
    deleting: bool
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    activation_requested_at: float | None = None  # the activator's wake-up stamp (desired/routing.py)

    def owner(self) -> dict[str, Any]:
        """The object as the reconcile functions and Events take it."""
        return {"apiVersion": API_VERSION, "kind": KIND, "spec": self.spec, "status": dict(self.status),
                "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid,
                             "generation": self.generation, "resourceVersion": self.resource_version}}


def service_view(body: Mapping[str, Any]) -> ServiceView:
    meta = body.get("metadata") or {}
    return ServiceView(namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
                       generation=meta.get("generation"), resource_version=str(meta.get("resourceVersion", "")),
                       deleting=bool(meta.get("deletionTimestamp")), spec=_plain(body.get("spec") or {}),
                       status=_plain(body.get("status") or {}),
                       activation_requested_at=activation_requested_at(meta.get("annotations")))


DeploymentView = dict  # {"metadata": {...}, "spec": {"replicas"}, "status": {...}}: what workload_status reads


def deployment_view(body: Mapping[str, Any]) -> DeploymentView:
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    stuck = [dict(c) for c in status.get("conditions") or []
             if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"]
    return {
        "metadata": {"name": meta.get("name"), "generation": meta.get("generation"),
                     "resourceVersion": str(meta.get("resourceVersion", "")),
                     "owners": tuple(ref.get("uid") for ref in meta.get("ownerReferences") or [])},
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {key: status.get(key) for key in ("observedGeneration", "replicas", "updatedReplicas",
                                                     "readyReplicas") if status.get(key) is not None}
        | ({"conditions": stuck} if stuck else {}),
    }


def _plain(value: Any) -> Any:
    """A deep copy as plain dicts and lists (kopf's bodies are views of its own state)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value



class WatchedState:
    """An informer-style cache of what the tick reads, fed by kopf's watch events (handlers.py): slim
    views of every InferenceService and serving Deployment, which serving Services exist, and the
    serving pods that cannot start or be scheduled. Updated and read on kopf's event loop."""

    def __init__(self) -> None:
        self.services: dict[ServiceKey, ServiceView] = {}
        self.deployments: dict[ServiceKey, DeploymentView] = {}
        self.network_services: set[ServiceKey] = set()
        self.problems: dict[ServiceKey, dict[str, PodProblem]] = {}
        # services whose children changed before they were cached: their next reconcile reads them
        self.unchecked: set[ServiceKey] = set()

    @staticmethod
    def _key(body: Mapping[str, Any], label: bool) -> ServiceKey | None:
        meta = body.get("metadata") or {}
        name = (meta.get("labels") or {}).get(SERVICE_LABEL) if label else meta.get("name")
        return (meta.get("namespace", ""), name) if name else None

    def service_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        key = self._key(body, label=False)
        if key is None:
            return
        if kind == "DELETED":
            self.services.pop(key, None)
        else:
            self.services[key] = service_view(body)

    def deployment_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        key = self._key(body, label=True)
        if key is None:
            return
        if kind == "DELETED":
            self.deployments.pop(key, None)
        else:
            self.deployments[key] = deployment_view(body)

    def network_service_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        key = self._key(body, label=True)
        if key is not None:
            (self.network_services.discard if kind == "DELETED" else self.network_services.add)(key)

    def pod_event(self, kind: str | None, body: Mapping[str, Any], problem: PodProblem | None) -> None:
        key = self._key(body, label=True)
        if key is None:
            return
        pod = (body.get("metadata") or {}).get("name", "")
        known = self.problems.get(key)
        if kind == "DELETED" or problem is None:
            if known is not None:
                known.pop(pod, None)
                if not known:
                    del self.problems[key]
        else:
            self.problems.setdefault(key, {})[pod] = problem

    def pod_health(self, key: ServiceKey) -> PodHealth:
        return PodHealth.of(list((self.problems.get(key) or {}).values()))

    def snapshot(self) -> tuple[list[ServiceView], dict[ServiceKey, DeploymentView], dict[ServiceKey, list[PodProblem]]]:
        """Copies for the tick's worker thread (taken on the event loop, where the cache changes)."""
        return (list(self.services.values()), dict(self.deployments),
                {key: list(pods.values()) for key, pods in self.problems.items()})
