"""What the autoscaler's tick reads, kept from kopf's watch events (no request per tick).

`WatchedState` is an informer-style cache: slim views of every InferenceService and serving
Deployment, which serving Services exist, and only the serving pods that cannot start or cannot
be scheduled. handlers.py feeds it from kopf's watch streams; it is read and changed on kopf's
event loop only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenscale.api import API_VERSION, KIND
from tokenscale.desired import SERVICE_LABEL
from tokenscale.desired.pods import PodHealth, PodProblem
from tokenscale.desired.routing import activation_requested_at
from tokenscale.desired.tickplan import Packed, unpacked

ServiceKey = tuple[str, str]  # (namespace, name)


# The status fields the tick and the drift handler read; the rest (endpoint, selector, ...) is
# written by them, never read from the cache. The two large ones are packed (tickplan.Packed).
STATUS_FIELDS = ("observedGeneration", "phase", "replicas", "readyReplicas", "desiredReplicas",
                 "recommendedReplicas", "costPerMillionTokens", "lastScaleTime", "conditions", "signals")
PACKED_FIELDS = ("autoscaler", "decisions")


@dataclass(frozen=True, slots=True)
class ServiceView:
    """What the tick needs of one InferenceService (not the whole object: 10,000 of them fit).
    `spec` is shared by every service with the same spec and must not be changed; `status` holds
    only STATUS_FIELDS, with PACKED_FIELDS as compact JSON text."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    resource_version: str
    deleting: bool
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    activation_requested_at: float | None = None  # the activator's wake-up stamp (desired/routing.py)

    def full_status(self) -> dict[str, Any]:
        """The cached status as plain dicts (packed fields unpacked)."""
        return {key: unpacked(value) for key, value in self.status.items()}

    def owner(self) -> dict[str, Any]:
        """The object as the reconcile functions and Events take it."""
        return {"apiVersion": API_VERSION, "kind": KIND, "spec": _plain(self.spec), "status": self.full_status(),
                "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid,
                             "generation": self.generation, "resourceVersion": self.resource_version}}


def service_view(body: Mapping[str, Any], *, previous: ServiceView | None = None,
                 specs: dict[str, Mapping[str, Any]] | None = None) -> ServiceView:
    """The slim view of a watched InferenceService. A spec is the same for a (uid, generation): it
    is taken from `previous` when that matches, else shared through `specs` (canonical JSON text
    -> the one copy), so a fleet of similar services keeps one copy of each distinct spec."""
    meta = body.get("metadata") or {}
    uid, generation = meta.get("uid", ""), meta.get("generation")
    if previous is not None and previous.uid == uid and previous.generation == generation:
        spec = previous.spec
    else:
        spec = _plain(body.get("spec") or {})
        if specs is not None:
            spec = specs.setdefault(json.dumps(spec, sort_keys=True, separators=(",", ":")), spec)
    return ServiceView(namespace=sys.intern(meta.get("namespace", "")), name=meta.get("name", ""), uid=uid,
                       generation=generation, resource_version=str(meta.get("resourceVersion", "")),
                       deleting=bool(meta.get("deletionTimestamp")), spec=spec,
                       status=slim_status(body.get("status") or {}),
                       activation_requested_at=activation_requested_at(meta.get("annotations")))


def slim_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """STATUS_FIELDS as plain values (strings interned: conditions repeat across the fleet), and
    PACKED_FIELDS packed."""
    slim = {key: _plain(status[key], intern=True) for key in STATUS_FIELDS if key in status}
    for key in PACKED_FIELDS:
        if status.get(key) is not None:
            slim[key] = Packed(_plain(status[key]))
    return slim


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


_SCALARS = (int, float, bool, type(None))


def _plain(value: Any, intern: bool = False) -> Any:
    """A deep copy as plain dicts and lists (kopf's bodies are views of its own state); `intern`:
    keys and short strings interned. (Exact type checks first: this runs on every watch event.)"""
    kind = type(value)
    if kind is str:
        return sys.intern(value) if intern and len(value) <= 256 else value
    if kind in _SCALARS:
        return value
    if kind is dict or isinstance(value, Mapping):
        if intern:
            return {sys.intern(k): _plain(v, True) for k, v in value.items()}
        return {k: _plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_plain(v, intern) for v in value]
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
        self._specs: dict[str, Mapping[str, Any]] = {}  # canonical JSON -> the shared spec

    def _shared_specs(self) -> dict[str, Mapping[str, Any]]:
        if len(self._specs) > 2 * len(self.services) + 100:  # drop the specs no view holds any more
            held = {id(view.spec) for view in self.services.values()}
            self._specs = {text: spec for text, spec in self._specs.items() if id(spec) in held}
        return self._specs

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
            self.services[key] = service_view(body, previous=self.services.get(key), specs=self._shared_specs())

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
