"""Scale from zero with the activator: the operator's side (kopf wiring and the cluster I/O).

- `Routes.ensure` / `Routes.remove`: the EndpointSlice `<name>-activator` that sends a serving
  Service's traffic to the activator (desired/routing.py builds it). The autoscaler calls
  `Routes.before_scale_to_zero` before it asks the last replica to stop (and does not scale to
  zero when it fails), and `Routes.sync` whenever replicas change; `route_at_zero` below does the
  same on every serving Deployment event, so a service scaled by hand or an operator restart is
  covered too, and the slice goes once a replica is ready.
- `activation_requested`: the activator's wake-up. It patches the annotation
  `tokenscale.io/activation-requested` on the InferenceService when it holds a request; the
  operator scales the Deployment 0 -> 1 at once, not after the next scrape and tick.
- a background refresh re-points the slices when the activator's own pods change.

The activator's Service is named by TOKENSCALE_ACTIVATOR_SERVICE (`namespace/name`), which the
chart sets when `activator.enabled`; without it no slice is made, and the autoscaler keeps one
replica of a service that relies on the activator instead of stranding it at zero.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from typing import Any

import kopf

from tokenscale.api import (
    GROUP,
    PLURAL,
    VERSION,
    AutoscalingMode,
    InferenceServiceSpec,
    SpecError,
    parse_spec,
)
from tokenscale.desired.labels import MANAGED_BY, SERVICE_LABEL
from tokenscale.desired.routing import (
    ACTIVATION_ANNOTATION,
    SERVICE_NAME_LABEL,
    ActivatorEndpoints,
    activation_requested_at,
    activation_signal,
    activator_slice,
    activator_slice_name,
    ready_addresses,
    routes_to_activator,
    uses_activator,
    wakes_from_zero,
)
from tokenscale.engines.base import PORT_NAME
from tokenscale.kube import ApiException, Kube

log = logging.getLogger("tokenscale.activation")

ACTIVATOR_SERVICE_ENV = "TOKENSCALE_ACTIVATOR_SERVICE"
ACTIVATOR_PORT_NAME = "proxy"  # the activator Service's port (charts/tokenscale, activator-service.yaml)
REFRESH_SECONDS = 15.0


def activator_service_from_env() -> tuple[str, str] | None:
    text = os.environ.get(ACTIVATOR_SERVICE_ENV, "").strip()
    namespace, _, name = text.partition("/")
    return (namespace, name) if namespace and name else None


def _json(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return json.loads(call(*args, _preload_content=False, **kwargs).data)


class Routes:
    """The activator slices of one operator; thread-safe (kopf runs sync handlers on threads)."""

    def __init__(self, kube: Kube, activator: tuple[str, str] | None) -> None:
        self.discovery, self.apps, self.custom = kube.discovery, kube.apps, kube.custom
        self.activator = activator
        self._lock = threading.Lock()
        self._endpoints: ActivatorEndpoints | None = None
        self._routed: dict[tuple[str, str], dict[str, Any] | None] = {}  # key -> owner (routed) or None
        self._zero_since: dict[tuple[str, str], float] = {}  # when a service's Deployment went to zero

    # --- the activator's own pods ------------------------------------------------------------

    def activator_endpoints(self, refresh: bool = False) -> ActivatorEndpoints | None:
        if self.activator is None:
            return None
        if self._endpoints is not None and not refresh:
            return self._endpoints
        namespace, name = self.activator
        slices = _json(self.discovery.list_namespaced_endpoint_slice, namespace,
                       label_selector=f"{SERVICE_NAME_LABEL}={name}").get("items") or []
        found = ready_addresses(slices, skip_manager=None, port_name=ACTIVATOR_PORT_NAME)
        if not found:
            self._endpoints = None
            return None
        families = [a for a, _ in found if ":" not in a] or [a for a, _ in found]  # one family per slice
        self._endpoints = ActivatorEndpoints(tuple(sorted(set(families))), found[0][1])
        return self._endpoints

    # --- one service's slice -------------------------------------------------------------------

    def ensure(self, owner: dict[str, Any]) -> bool:
        """The service's traffic goes to the activator. False when there is no activator to send it to."""
        meta = owner["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            endpoints = self.activator_endpoints()
            if endpoints is None:
                endpoints = self.activator_endpoints(refresh=True)
            if endpoints is None:
                log.warning("cannot route %s/%s to the activator: no ready activator pod (%s=%s)",
                            *key, ACTIVATOR_SERVICE_ENV, "/".join(self.activator or ("", "")) or "unset")
                return False
            known = self._routed.get(key)
            if known is not None and known["metadata"].get("uid") == meta.get("uid"):
                return True  # made for this very object (a namesake's slice went with its owner)
            self._apply(owner, endpoints)
            self._routed[key] = _owner_ref(owner)
            return True

    def known_unrouted(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self._routed and self._routed[(namespace, name)] is None

    def remove(self, namespace: str, name: str) -> None:
        """A replica is ready: the Service's own endpoints take the traffic again."""
        key = (namespace, name)
        with self._lock:
            if key in self._routed and self._routed[key] is None:
                return  # known to be gone
            try:
                self.discovery.delete_namespaced_endpoint_slice(activator_slice_name(name), namespace)
                log.info("%s/%s has a ready replica: its traffic no longer goes through the activator", *key)
            except ApiException as error:
                if error.status != 404:
                    raise
            self._routed[key] = None

    def sync(self, owner: dict[str, Any], spec: InferenceServiceSpec, *, desired: int, ready: int) -> bool:
        """Slice or no slice, from the replicas. Returns whether the service is routed to the activator."""
        meta = owner["metadata"]
        if self.activator is None:
            return False  # no activator deployed: nothing to route to, no slice to remove
        if routes_to_activator(spec, desired_replicas=desired, ready_replicas=ready):
            return self.ensure(owner)
        self.remove(meta["namespace"], meta["name"])  # once per service (a slice left by a restart or an
        return False  # older spec goes), then known: no request

    def before_scale_to_zero(self, owner: dict[str, Any], spec: InferenceServiceSpec) -> bool:
        """Call before asking the last replica to stop. False: do not scale to zero (nothing would
        receive the service's requests); True when the service does not use the activator."""
        return not uses_activator(spec) or self.ensure(owner)

    def refresh(self) -> int:
        """Re-point every routed slice when the activator's pods changed. Returns slices rewritten."""
        with self._lock:
            before = self._endpoints
            endpoints = self.activator_endpoints(refresh=True)
            if endpoints is None or endpoints == before:
                return 0
            owners = [owner for owner in self._routed.values() if owner is not None]
            for owner in owners:
                self._apply(owner, endpoints)
            return len(owners)

    def _apply(self, owner: dict[str, Any], endpoints: ActivatorEndpoints) -> None:
        meta = owner["metadata"]
        body = activator_slice(meta["name"], meta["namespace"], port_name=PORT_NAME, endpoints=endpoints,
                               owner=owner)
        try:
            self.discovery.create_namespaced_endpoint_slice(meta["namespace"], body)
            log.info("%s/%s routed to the activator (%s)", meta["namespace"], meta["name"],
                     ", ".join(endpoints.addresses))
        except ApiException as error:
            if error.status != 409:
                raise
            self.discovery.patch_namespaced_endpoint_slice(
                body["metadata"]["name"], meta["namespace"],
                {"addressType": body["addressType"], "ports": body["ports"], "endpoints": body["endpoints"],
                 "metadata": {"labels": body["metadata"]["labels"]}})

    def note_replicas(self, namespace: str, name: str, desired: int) -> None:
        """Remember when a service went to zero: activation requests older than that are answered."""
        key = (namespace, name)
        if desired == 0:
            self._zero_since.setdefault(key, time.time())
        else:
            self._zero_since.pop(key, None)

    def wake(self, owner: dict[str, Any], requested_at: float | None) -> bool:
        """0 -> 1 at once (the slice stays until a replica is ready). True when it scaled."""
        meta = owner["metadata"]
        zero_since = self._zero_since.get((meta["namespace"], meta["name"]))
        if not wakes_from_zero(requested_at, zero_since=zero_since, now=time.time()):
            return False
        try:
            deployment = _json(self.apps.read_namespaced_deployment, meta["name"], meta["namespace"])
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        if int((deployment.get("spec") or {}).get("replicas") or 0) != 0:
            return False
        self.ensure(owner)
        self.apps.patch_namespaced_deployment(meta["name"], meta["namespace"], {"spec": {"replicas": 1}})
        return True


def _owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner.get("metadata") or {}
    return {"apiVersion": owner.get("apiVersion", f"{GROUP}/{VERSION}"), "kind": owner.get("kind", "InferenceService"),
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid")}}


# --- kopf wiring ---------------------------------------------------------------------------------


def routes(memo: Any) -> Routes:
    """The shared Routes (set at startup; kopf gives each object a shallow copy of the memo)."""
    if getattr(memo, "routes", None) is None:
        kube = getattr(memo, "kube", None)
        if kube is None:
            from tokenscale import reconcile
            from tokenscale.settings import Settings

            kube = memo.kube = reconcile.connect(getattr(memo, "settings", None) or Settings())
        memo.routes = Routes(kube, activator_service_from_env())
    return memo.routes


@kopf.on.startup()
async def start_routes(memo: Any, **_: Any) -> None:
    routes(memo)
    memo.routes_refresh = asyncio.create_task(_refresh_forever(memo.routes))


@kopf.on.cleanup()
async def stop_routes(memo: Any, **_: Any) -> None:
    task = getattr(memo, "routes_refresh", None)
    if task is not None:
        task.cancel()


async def _refresh_forever(shared: Routes) -> None:
    while True:
        await asyncio.sleep(REFRESH_SECONDS)
        try:
            count = await asyncio.to_thread(shared.refresh)
            if count:
                log.info("the activator's pods changed: %d slice(s) re-pointed", count)
        except Exception as error:  # noqa: BLE001 - the next round retries
            log.warning("refreshing the activator slices failed: %s", error)


def _spec(body: Any) -> InferenceServiceSpec | None:
    try:
        return parse_spec(body.get("spec"))
    except SpecError:
        return None


def _recent(annotations: Any, **_: Any) -> bool:
    """kopf's filter: only objects whose activation stamp is recent reach the handler (the stamp
    stays on the object after the visit; its events cost nothing then)."""
    return activation_signal(annotations, time.time()) > 0


@kopf.on.event(GROUP, VERSION, PLURAL, annotations={ACTIVATION_ANNOTATION: kopf.PRESENT}, when=_recent)
def activation_requested(body: kopf.Body, memo: Any, **_: Any) -> None:
    """The activator holds a request for this service: wake it now if it is at zero."""
    if body.metadata.get("deletionTimestamp"):
        return
    spec = _spec(body)
    if spec is None or not uses_activator(spec) or spec.autoscaling.mode != AutoscalingMode.Active:
        return
    owner = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": dict(body.metadata)}
    if routes(memo).wake(owner, activation_requested_at(body.metadata.annotations)):
        kopf.info(body, reason="Activated", message="Scaling 0 -> 1: the activator holds a request for this "
                  "service and forwards it once a replica is ready")


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def route_at_zero(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A serving Deployment changed: route its service to the activator while no replica is ready."""
    name, namespace = body.metadata.labels.get(SERVICE_LABEL), body.metadata.namespace
    if not name or not namespace or body.metadata.get("deletionTimestamp"):
        return
    shared = routes(memo)
    if shared.activator is None:
        return  # no activator deployed: no slices, and no reads for them
    desired = int((body.get("spec") or {}).get("replicas") or 0)
    ready = int((body.get("status") or {}).get("readyReplicas") or 0)
    shared.note_replicas(namespace, name, desired)
    if desired > 0 and ready > 0 and shared.known_unrouted(namespace, name):
        return  # serving, and known to have no slice: the common event costs no request
    try:
        owner = _json(shared.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status == 404:
            return
        raise
    spec = _spec(owner)
    if spec is None or owner["metadata"].get("deletionTimestamp"):
        return
    shared.sync(owner, spec, desired=desired, ready=ready)
