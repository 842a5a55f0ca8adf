"""The labels tokenscale puts on what it creates, and their Prometheus form: one home for the
literals that the builders, the queries, the watch filters and the local loop share."""

from __future__ import annotations

import re

MANAGED_BY = "tokenscale"
SERVICE_LABEL = "tokenscale.io/service"
ENGINE_LABEL = "tokenscale.io/engine"


def prometheus_label(label: str) -> str:
    """The name the Prometheus Operator gives a pod label (podTargetLabels): every character
    outside [a-zA-Z0-9_] becomes an underscore."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


PROMETHEUS_SERVICE_LABEL = prometheus_label(SERVICE_LABEL)  # tokenscale_io_service
