"""Which InferenceService a request is for: its Host header, else the model it names.

A Service's traffic reaches the activator with the Host the client used:
`name.namespace`, `name.namespace.svc`, `name.namespace.svc.cluster.local` (with or without a
port), or a bare `name[:port]` from a client in the service's own namespace. A bare name is
resolved among the InferenceServices of that name by the `model` of the request body; a Host
that names no service (an IP address, an ingress host) by the model alone. Anything that stays
ambiguous is refused with a message that says how to address the service.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

ServiceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class KnownService:
    namespace: str
    name: str
    model: str  # the name clients send in the OpenAI `model` field

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class HostName:
    name: str | None  # None: the host names no service (an IP address)
    namespace: str | None  # None: a bare name (a client in the service's namespace)


class Unresolved(Exception):
    """No single service matches; `status` and str() are the client's answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_host(host: str | None) -> HostName:
    """`name.namespace[.svc[.domain]][:port]` -> its name and namespace."""
    text = (host or "").strip().lower()
    if text.startswith("["):  # [IPv6]:port
        return HostName(None, None)
    text = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    text = text.rstrip(".")
    try:
        ipaddress.ip_address(text)
        return HostName(None, None)
    except ValueError:
        pass
    parts = text.split(".")
    if not parts or not parts[0]:
        return HostName(None, None)
    if len(parts) == 1:
        return HostName(parts[0], None)
    if len(parts) == 2 or parts[2] == "svc":
        return HostName(parts[0], parts[1])
    return HostName(None, None)  # some other DNS name: not a Service's


def requested_model(body: bytes) -> str | None:
    """The `model` of a JSON request body, if there is one."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None


def resolve(host: str | None, body: bytes, services: Iterable[KnownService]) -> KnownService:
    """The one service the request is for, or Unresolved (404 none, 400 ambiguous)."""
    services = list(services)
    parsed = parse_host(host)
    model = requested_model(body)
    if parsed.name is not None and parsed.namespace is not None:
        for service in services:
            if service.key == (parsed.namespace, parsed.name):
                return service
        raise Unresolved(404, f"no InferenceService {parsed.name!r} in namespace {parsed.namespace!r} "
                              "is routed through the activator")
    named = [s for s in services if s.name == parsed.name] if parsed.name is not None else services
    if parsed.name is not None and not named:
        raise Unresolved(404, f"no InferenceService named {parsed.name!r} is routed through the activator")
    if len(named) == 1 and parsed.name is not None:
        return named[0]
    by_model = [s for s in named if model is not None and s.model == model]
    if len(by_model) == 1:
        return by_model[0]
    where = f"named {parsed.name!r}" if parsed.name is not None else f"for host {host!r}"
    if not by_model and model is None:
        raise Unresolved(400, f"cannot tell which InferenceService {where} the request is for: address it "
                              "as <name>.<namespace> (or .svc) in the Host, or name its model")
    if not by_model:
        raise Unresolved(404, f"no InferenceService {where} serves model {model!r}")
    spots = ", ".join(f"{s.name}.{s.namespace}" for s in by_model)
    raise Unresolved(400, f"several InferenceServices {where} serve model {model!r} ({spots}): address "
                          "one as <name>.<namespace> in the Host")
