"""The one module that talks to the kubernetes client package: configuration, the lean request
path, child objects by kind, and the API server's error text.

Everything above (reconcile, autoscaler, handlers, activation, the activator) reaches the cluster
through these names, so the client's plumbing and its exceptions have one home (an import-linter
contract in pyproject.toml keeps it so).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import kubernetes

from tokenscale.api.wire import MERGE_PATCH

ApiException = kubernetes.client.ApiException
__all__ = ["MERGE_PATCH", "ApiException", "ChildApi", "Kube", "api_error_message", "is_missing", "load_configuration"]


def load_configuration(kubeconfig: str | None = None, context: str | None = None, *,
                       pool_size: int | None = None) -> kubernetes.client.Configuration:
    """The client configuration: `kubeconfig`, else $KUBECONFIG / ~/.kube/config, else in-cluster
    (a pod, with no kubeconfig named)."""
    configuration = kubernetes.client.Configuration()
    if not kubeconfig and "KUBERNETES_SERVICE_HOST" in os.environ:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig, context=context,
                                           client_configuration=configuration)
    if pool_size is not None:
        # One connection per thread that may call at once (kopf's handler threads, the tick's
        # writers): a smaller pool discards and reopens connections under load.
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, pool_size)
    return configuration


@dataclass
class Kube:
    """Typed clients over one ApiClient; each call returns the server's JSON as a dict."""

    client: kubernetes.client.ApiClient

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None, *,
                pool_size: int | None = None) -> Kube:
        return cls(kubernetes.client.ApiClient(load_configuration(kubeconfig, context, pool_size=pool_size)))

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
            raise ApiException(http_resp=response)
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

    @property
    def discovery(self) -> kubernetes.client.DiscoveryV1Api:
        return kubernetes.client.DiscoveryV1Api(self.client)


def is_missing(error: Exception) -> bool:
    """A 404 from the API server."""
    return isinstance(error, ApiException) and error.status == 404


_CHILD_PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets",
    "PodMonitor": "/apis/monitoring.coreos.com/v1/namespaces/{namespace}/podmonitors",
}


class ChildApi:
    """Read / create / replace / delete one kind of child by name, as dicts (on `Kube.request`)."""

    def __init__(self, kube: Kube, kind: str):
        if kind not in _CHILD_PATHS:
            raise ValueError(f"unknown child kind {kind}")
        self.kind, self.kube, self.path = kind, kube, _CHILD_PATHS[kind]

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.kube.request("GET", f"{self.path.format(namespace=namespace)}/{name}")
        except ApiException as error:
            if is_missing(error):
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
        except ApiException as error:
            if is_missing(error):
                return False
            raise


def api_error_message(error: Exception) -> str:
    """The API server's own words for a refused request: its message and each cause's field and
    reason (a 422's details.causes), not just "422 Unprocessable Entity"."""
    if not isinstance(error, ApiException):
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
