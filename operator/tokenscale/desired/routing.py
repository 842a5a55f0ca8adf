"""Routing at zero replicas: the activator's EndpointSlice, and when a service needs it.

A Service's selector only reaches pods of its own namespace, and the activator runs in the
operator's. So the switch is an extra EndpointSlice: kube-proxy routes a Service to the union of
every EndpointSlice labelled `kubernetes.io/service-name: <service>`, and the EndpointSlice
controller manages only the slices whose `endpointslice.kubernetes.io/managed-by` is its own.
While a service has no ready replica (or is about to have none) the operator adds the slice
`<name>-activator`, which lists the activator's pods under the Service's port name; once a
serving replica is ready it removes it. Both may be present for a moment: the activator forwards
what it receives straight to a ready pod, so the overlap costs one hop, never a request.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenscale.api.models import AutoscalingSpec, InferenceServiceSpec
from tokenscale.desired.labels import MANAGED_BY, SERVICE_LABEL
from tokenscale.policy.types import Signals

SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # joins a slice to its Service (kube-proxy reads it)
SLICE_MANAGER_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "activator.tokenscale.io"  # not the EndpointSlice controller's: it leaves the slice alone
# Set by the activator on the InferenceService when it holds a request (RFC 3339, UTC). kopf's
# storages own the `tokenscale.io/` prefix, so a change here is no spec change to the handlers.
ACTIVATION_ANNOTATION = "tokenscale.io/activation-requested"
# The activator refreshes the annotation this often while it holds requests ...
ACTIVATION_REFRESH_SECONDS = 10.0
# ... and a request this recent counts as demand (two refreshes and a tick of slack).
ACTIVATION_FRESH_SECONDS = 30.0


def uses_activator(spec: InferenceServiceSpec | AutoscalingSpec) -> bool:
    """The service scales to zero and is woken by the activator's held requests."""
    scaling = spec.autoscaling if isinstance(spec, InferenceServiceSpec) else spec
    return bool(scaling.enabled and scaling.min_replicas == 0 and scaling.activation is not None
                and scaling.activation.activator)


def routes_to_activator(spec: InferenceServiceSpec, *, desired_replicas: int, ready_replicas: int) -> bool:
    """Whether the activator's slice must exist: the service is going to zero (ensure the slice
    before the last replica is asked to stop) or has no ready replica (hold until one is)."""
    return uses_activator(spec) and (desired_replicas == 0 or ready_replicas == 0)


def activator_slice_name(name: str) -> str:
    return f"{name}-activator"


@dataclass(frozen=True)
class ActivatorEndpoints:
    """The activator's ready pods (addresses of one family) and the port it proxies on."""

    addresses: tuple[str, ...]
    port: int

    @property
    def address_type(self) -> str:
        if self.addresses and all(ipaddress.ip_address(a).version == 6 for a in self.addresses):
            return "IPv6"
        return "IPv4"


def activator_slice(
    name: str, namespace: str, *, port_name: str, endpoints: ActivatorEndpoints, owner: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The EndpointSlice that points the serving Service `name` at the activator's pods.

    `port_name` is the Service's port name: kube-proxy matches the slice's ports by name, so the
    Service's port then leads to the activator's port. Owned by the InferenceService, so it goes
    with it.
    """
    metadata: dict[str, Any] = {
        "name": activator_slice_name(name),
        "namespace": namespace,
        "labels": {
            SERVICE_NAME_LABEL: name,
            SLICE_MANAGER_LABEL: SLICE_MANAGER,
            SERVICE_LABEL: name,
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/component": "activator-route",
        },
    }
    if owner is not None:
        meta = owner.get("metadata") or {}
        metadata["ownerReferences"] = [{
            "apiVersion": owner.get("apiVersion", ""), "kind": owner.get("kind", ""),
            "name": meta.get("name", name), "uid": meta.get("uid", ""),
            "controller": True, "blockOwnerDeletion": True,
        }]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": endpoints.address_type,
        "ports": [{"name": port_name, "port": endpoints.port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}} for address in endpoints.addresses],
    }


def ready_addresses(slices: Sequence[Mapping[str, Any]], *, skip_manager: str | None = SLICE_MANAGER,
                    port_name: str | None = None) -> list[tuple[str, int]]:
    """(address, port) of every ready endpoint in `slices` (a Service's slices, as the API lists them).

    Slices managed by `skip_manager` (the activator's own) are left out. `ready` missing means
    ready (the API's documented reading); a terminating endpoint is never ready. The port is the
    one named `port_name`, else the slice's first.
    """
    found: list[tuple[str, int]] = []
    for item in slices:
        labels = (item.get("metadata") or {}).get("labels") or {}
        if skip_manager is not None and labels.get(SLICE_MANAGER_LABEL) == skip_manager:
            continue
        ports = item.get("ports") or []
        port = next((p for p in ports if port_name is not None and p.get("name") == port_name), None)
        port = port or (ports[0] if ports else None)
        if port is None or port.get("port") is None:
            continue
        for endpoint in item.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            for address in endpoint.get("addresses") or []:
                found.append((address, int(port["port"])))
    return found


def wakes_from_zero(requested_at: float | None, *, zero_since: float | None, now: float,
                    fresh_seconds: float = ACTIVATION_FRESH_SECONDS, skew_seconds: float = 1.0) -> bool:
    """Whether an activation request asks to wake a service that is at zero now: it is recent, and not
    older than the scale to zero (a request held before it was answered already; a new one would be
    stamped later). `zero_since` None: unknown (a restarted operator), recent is enough. The activator
    refreshes its stamp while it holds requests, so a request refused here is woken by the next one."""
    if requested_at is None or now - requested_at > fresh_seconds:
        return False
    return zero_since is None or requested_at >= zero_since - skew_seconds


def activation_requested_at(annotations: Mapping[str, str] | None) -> float | None:
    """Unix time of the activator's last request in the annotations; None if absent or unreadable."""
    text = (annotations or {}).get(ACTIVATION_ANNOTATION)
    if not text:
        return None
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def activation_signal(annotations: Mapping[str, str] | None, now: float,
                      fresh_seconds: float = ACTIVATION_FRESH_SECONDS) -> float:
    """`Signals.activation` for a service woken by the activator: 1 while a held request is recent
    (demand: the policy wakes it, or does not call it idle), else 0 (nothing waits)."""
    requested = activation_requested_at(annotations)
    if requested is None:
        return 0.0
    return 1.0 if now - requested <= fresh_seconds else 0.0


def with_activation(signals: Signals, spec: InferenceServiceSpec | AutoscalingSpec, requested_at: float | None,
                    now: float,
                    fresh_seconds: float = ACTIVATION_FRESH_SECONDS) -> Signals:
    """The tick's signals for a service woken by the activator: `activation` is 1 while a held
    request is recent (at zero: wake it; above zero: it is not idle, so the next tick does not
    scale it back to zero) and 0 otherwise: known, not missing. An activation query's own value,
    when the spec has one too, counts as well. Other services' signals pass unchanged."""
    if not uses_activator(spec):
        return signals
    recent = requested_at is not None and now - requested_at <= fresh_seconds
    query = signals.activation if signals.activation is not None and math.isfinite(signals.activation) else 0.0
    return dataclasses.replace(signals, activation=max(1.0 if recent else 0.0, query))
