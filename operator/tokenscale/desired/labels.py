"""Labels of everything tokenscale creates for an InferenceService."""

from __future__ import annotations

from tokenscale.api.labels import ENGINE_LABEL, MANAGED_BY, SERVICE_LABEL

__all__ = ["ENGINE_LABEL", "MANAGED_BY", "SERVICE_LABEL", "labels", "selector_labels", "selector_string"]


def selector_labels(name: str) -> dict[str, str]:
    """The pod selector: stable for the object's life (a Deployment's selector is immutable)."""
    return {"app.kubernetes.io/instance": name, SERVICE_LABEL: name}


def labels(name: str, engine: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": engine,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "inference-server",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "tokenscale",
        SERVICE_LABEL: name,
        ENGINE_LABEL: engine,
    }


def selector_string(name: str) -> str:
    """The selector as `status.selector` (the scale subresource) writes it."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))
