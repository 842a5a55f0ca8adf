"""The activator's view of the cluster, through the Kubernetes API (async, aiohttp).

Three reads and one write, all the activator's RBAC grants (charts/tokenscale, activator-rbac):
- list InferenceServices (cached for a few seconds): the services routed through the activator
  and the model each serves;
- list a service's EndpointSlices (`kubernetes.io/service-name=<name>`): its ready replicas,
  its own slice (managed by the activator) left out;
- patch an InferenceService's annotation `tokenscale.io/activation-requested`: the wake-up the
  operator acts on at once.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import aiohttp

from tokenscale.activator.hosts import KnownService, ServiceKey
from tokenscale.activator.proxy import ClusterUnavailable
from tokenscale.api import GROUP, PLURAL, VERSION, SpecError, parse_spec
from tokenscale.api.wire import MERGE_PATCH, rfc3339
from tokenscale.desired.routing import (
    ACTIVATION_ANNOTATION,
    SERVICE_NAME_LABEL,
    ready_addresses,
    uses_activator,
)
from tokenscale.engines.base import PORT_NAME


class KubeCluster:
    """`Cluster` over the Kubernetes API: a kubeconfig, or the pod's service account."""

    def __init__(self, *, kubeconfig: str | None = None, context: str | None = None,
                 namespaces: tuple[str, ...] = (), timeout_seconds: float = 10.0) -> None:
        from tokenscale.kube import load_configuration  # only for reading the credentials

        configuration = load_configuration(kubeconfig, context)
        self._configuration = configuration
        self.host = configuration.host.rstrip("/")
        self.namespaces = namespaces
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True
        if self.host.startswith("https"):
            context_ = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
            if configuration.cert_file:
                context_.load_cert_chain(configuration.cert_file, configuration.key_file)
            if not configuration.verify_ssl:
                context_.check_hostname = False
                context_.verify_mode = ssl.CERT_NONE
            self._ssl = context_

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self) -> dict[str, str]:
        configuration = self._configuration
        if configuration.refresh_api_key_hook is not None:  # in-cluster: the projected token rotates
            configuration.refresh_api_key_hook(configuration)
        token = configuration.get_api_key_with_prefix("BearerToken") or \
            configuration.get_api_key_with_prefix("authorization")
        headers = {"Accept": "application/json", "User-Agent": "tokenscale-activator"}
        if token:
            headers["Authorization"] = token
        elif configuration.username:
            headers["Authorization"] = configuration.get_basic_auth_token()
        return headers

    async def _call(self, method: str, path: str, *, params: dict[str, str] | None = None,
                    json: Any = None, content_type: str | None = None) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = self._headers()
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with self._session.request(method, self.host + path, params=params, json=json,
                                             headers=headers, ssl=self._ssl) as response:
                body = await response.json(content_type=None) if response.content_length != 0 else None
                if response.status >= 500 or response.status in (401, 403):
                    message = (body or {}).get("message") if isinstance(body, dict) else None
                    raise ClusterUnavailable(f"{method} {path}: {response.status} {message or response.reason}")
                return response.status, body
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise ClusterUnavailable(f"{method} {path}: {type(error).__name__}: {error}") from error

    async def services(self) -> list[KnownService]:
        paths = ([f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}" for ns in self.namespaces]
                 or [f"/apis/{GROUP}/{VERSION}/{PLURAL}"])
        found: list[KnownService] = []
        for path in paths:
            status, body = await self._call("GET", path)
            if status != 200:
                raise ClusterUnavailable(f"listing InferenceServices: HTTP {status}")
            for item in body.get("items") or []:
                meta = item.get("metadata") or {}
                try:
                    spec = parse_spec(item.get("spec"))
                except SpecError:
                    continue  # reported by the operator
                if meta.get("deletionTimestamp") or not uses_activator(spec):
                    continue
                model = spec.model.served_name or spec.model.source
                found.append(KnownService(meta.get("namespace", ""), meta.get("name", ""), model))
        return found

    async def ready_endpoints(self, key: ServiceKey) -> list[str]:
        namespace, name = key
        status, body = await self._call(
            "GET", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            params={"labelSelector": f"{SERVICE_NAME_LABEL}={name}"})
        if status != 200:
            return []
        slices = [s for s in body.get("items") or []
                  if ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL) == name]
        return [f"http://{_host(address)}:{port}" for address, port in ready_addresses(slices, port_name=PORT_NAME)]

    async def request_activation(self, key: ServiceKey) -> None:
        namespace, name = key
        patch = {"metadata": {"annotations": {ACTIVATION_ANNOTATION: rfc3339(time.time(), millis=True)}}}
        status, body = await self._call(
            "PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}",
            json=patch, content_type=MERGE_PATCH)
        if status >= 300:
            message = (body or {}).get("message") if isinstance(body, dict) else None
            raise ClusterUnavailable(f"waking {namespace}/{name}: HTTP {status} {message or ''}".strip())


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
