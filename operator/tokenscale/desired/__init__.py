"""Pure builders: the desired children of an InferenceService, drift checks, and status."""

from tokenscale.desired.conditions import (
    DEGRADED,
    PROGRESSING,
    READY,
    degraded_status,
    endpoint_url,
    get_condition,
    set_condition,
    workload_status,
)
from tokenscale.desired.drift import differences, parse_quantity
from tokenscale.desired.labels import MANAGED_BY, SERVICE_LABEL, labels, selector_labels, selector_string
from tokenscale.desired.workload import (
    BuildSettings,
    DesiredChildren,
    children,
    deployment,
    deployment_replicas,
    may_run_several,
    operator_children,
    pod_disruption_budget,
    pod_monitor,
    service,
)

__all__ = [
    "DEGRADED", "MANAGED_BY", "PROGRESSING", "READY", "SERVICE_LABEL", "BuildSettings", "DesiredChildren", "children",
    "degraded_status", "deployment", "differences", "endpoint_url", "get_condition", "labels",
    "may_run_several", "operator_children", "parse_quantity", "pod_disruption_budget", "pod_monitor", "deployment_replicas",
    "selector_labels", "selector_string", "service", "set_condition", "workload_status",
]
