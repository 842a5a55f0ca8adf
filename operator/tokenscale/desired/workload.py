"""The desired children of an InferenceService as plain dicts: Deployment, Service, PDB, PodMonitor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tokenscale.api.labels import ENGINE_LABEL, PROMETHEUS_SERVICE_LABEL, SERVICE_LABEL
from tokenscale.api.models import AutoscalingMode, InferenceServiceSpec, SchedulingSpec
from tokenscale.desired.drift import pod_annotations
from tokenscale.desired.labels import labels, selector_labels
from tokenscale.engines import adapter_for
from tokenscale.engines.base import PORT_NAME
from tokenscale.settings import DEFAULT_SERVICE_LABEL


def deployment_replicas(spec: InferenceServiceSpec, current: int | None) -> int:
    """Who owns the replica count: the autoscaler (keep what it set) or spec.replicas.

    With autoscaling Active the Deployment's current count stands (clamped into the bounds,
    which the user may just have changed); a new Deployment starts at spec.replicas clamped.
    Manual mode and DryRun (which only recommends) apply spec.replicas.
    """
    scaling = spec.autoscaling
    if not scaling.enabled or scaling.mode == AutoscalingMode.DryRun:
        return spec.replicas
    start = spec.replicas if current is None else current
    return max(scaling.min_replicas, min(scaling.max_replicas, start))


def may_run_several(spec: InferenceServiceSpec) -> bool:
    """A PodDisruptionBudget exists while the service can have more than one replica."""
    scaling = spec.autoscaling
    if scaling.enabled and scaling.mode == AutoscalingMode.Active:
        return scaling.max_replicas > 1
    return spec.replicas > 1


def _metadata(name: str, namespace: str, spec: InferenceServiceSpec) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(name, spec.engine.type.value)}


def deployment(name: str, namespace: str, spec: InferenceServiceSpec, *, replicas: int,
               default_server_image: str | None = None) -> dict[str, Any]:
    adapter = adapter_for(spec.engine.type)
    default_image = default_server_image if spec.engine.type.value == "builtin" else None
    scheduling, platform = spec.scheduling, spec.pod
    pod: dict[str, Any] = {
        "containers": [adapter.container(spec, default_image)],
        "volumes": adapter.volumes(spec),
        "securityContext": adapter.pod_security_context(),
        "terminationGracePeriodSeconds": adapter.termination_grace_seconds(spec),
        "enableServiceLinks": False,  # a namespace with many Services would flood the env
        "automountServiceAccountToken": platform.automount_service_account_token,
    }
    if platform.service_account_name:
        pod["serviceAccountName"] = platform.service_account_name
    if platform.image_pull_secrets:
        pod["imagePullSecrets"] = [ref.model_dump(by_alias=True) for ref in platform.image_pull_secrets]
    if scheduling.node_selector:
        pod["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in scheduling.tolerations]
    if scheduling.affinity:
        pod["affinity"] = scheduling.affinity
    if scheduling.priority_class_name:
        pod["priorityClassName"] = scheduling.priority_class_name
    if scheduling.runtime_class_name:
        pod["runtimeClassName"] = scheduling.runtime_class_name
    if scheduling.topology_spread_constraints:
        pod["topologySpreadConstraints"] = _spread(name, scheduling)
    metadata = _metadata(name, namespace, spec)
    # The user's pod labels never collide with ours: the API (models.RESERVED_POD_LABELS) refuses them.
    template_metadata: dict[str, Any] = {"labels": {**metadata["labels"], **platform.labels}}
    if platform.annotations:
        template_metadata["annotations"] = pod_annotations(platform.annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "revisionHistoryLimit": 5,
            # A new pod surges before an old one goes: no capacity dip, and a rollout that finds
            # no free GPU waits instead of taking a serving replica down.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            # Longer than the startup probe's budget, so a slow model load is not "stuck".
            "progressDeadlineSeconds": adapter.probes.startup_period * adapter.probes.startup_failures + 300,
            "template": {"metadata": template_metadata, "spec": pod},
        },
    }


def _spread(name: str, scheduling: SchedulingSpec) -> list[dict[str, Any]]:
    """topologySpreadConstraints as core/v1 has them; without a labelSelector, this service's pods."""
    spread = []
    for constraint in scheduling.topology_spread_constraints:
        item = constraint.model_dump(by_alias=True, mode="json", exclude_none=True, exclude_defaults=True)
        item.update(maxSkew=constraint.max_skew, whenUnsatisfiable=constraint.when_unsatisfiable.value)
        item.setdefault("labelSelector", {"matchLabels": selector_labels(name)})
        spread.append(item)
    return spread


def service(name: str, namespace: str, spec: InferenceServiceSpec) -> dict[str, Any]:
    adapter = adapter_for(spec.engine.type)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, spec),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [{"name": PORT_NAME, "port": adapter.port, "targetPort": PORT_NAME, "protocol": "TCP",
                       "appProtocol": "http"}],
        },
    }


def pod_disruption_budget(name: str, namespace: str, spec: InferenceServiceSpec) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, namespace, spec),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(name)}},
    }


def pod_monitor(name: str, namespace: str, spec: InferenceServiceSpec, *,
                service_label: str = DEFAULT_SERVICE_LABEL, namespace_label: str = "namespace",
                interval: str = "15s") -> dict[str, Any]:
    """A Prometheus Operator PodMonitor whose series carry the labels the autoscaler groups by."""
    metrics = adapter_for(spec.engine.type).metrics()
    relabelings = [
        {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_" + PROMETHEUS_SERVICE_LABEL],
         "targetLabel": service_label},
        {"action": "replace", "sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": namespace_label},
        {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"},
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata(name, namespace, spec),
        "spec": {
            "selector": {"matchLabels": selector_labels(name)},
            "podTargetLabels": [SERVICE_LABEL, ENGINE_LABEL],
            "podMetricsEndpoints": [{"port": metrics.port_name, "path": metrics.path, "interval": interval,
                                     "relabelings": relabelings}],
        },
    }


@dataclass(frozen=True)
class DesiredChildren:
    """Everything one InferenceService should own; None marks a child that should not exist."""

    deployment: dict[str, Any]
    service: dict[str, Any]
    pod_disruption_budget: dict[str, Any] | None
    pod_monitor: dict[str, Any] | None


def children(name: str, namespace: str, spec: InferenceServiceSpec, *, current_replicas: int | None,
             default_server_image: str | None = None, service_label: str = DEFAULT_SERVICE_LABEL,
             namespace_label: str = "namespace") -> DesiredChildren:
    return DesiredChildren(
        deployment=deployment(name, namespace, spec, replicas=deployment_replicas(spec, current_replicas),
                              default_server_image=default_server_image),
        service=service(name, namespace, spec),
        pod_disruption_budget=pod_disruption_budget(name, namespace, spec) if may_run_several(spec) else None,
        pod_monitor=pod_monitor(name, namespace, spec, service_label=service_label,
                                namespace_label=namespace_label) if spec.monitoring.pod_monitor else None,
    )


class BuildSettings(Protocol):
    """The operator settings that shape its children (tokenscale.settings.Settings has them)."""

    default_server_image: str
    service_label: str
    namespace_label: str


def operator_children(name: str, namespace: str, spec: InferenceServiceSpec, settings: BuildSettings, *,
                      current_replicas: int | None) -> DesiredChildren:
    """The children exactly as the operator creates them with these settings: the one call that
    the reconciler and `tokenscale render` share, so the two cannot differ."""
    return children(name, namespace, spec, current_replicas=current_replicas,
                    default_server_image=settings.default_server_image,
                    service_label=settings.service_label, namespace_label=settings.namespace_label)
