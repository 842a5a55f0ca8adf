"""The activator: holds requests for InferenceServices at zero replicas until one is ready
(docs/scale-to-zero.md). `proxy` is the HTTP proxy, `hosts` tells services apart, `kube` reads
the cluster; `tokenscale activator` runs it."""

from tokenscale.activator.hosts import KnownService, Unresolved, parse_host, resolve
from tokenscale.activator.proxy import Activator, ActivatorConfig, Cluster, ClusterUnavailable

__all__ = ["Activator", "ActivatorConfig", "Cluster", "ClusterUnavailable", "KnownService", "Unresolved",
           "parse_host", "resolve"]
