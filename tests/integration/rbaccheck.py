"""Checking recorded API requests against RBAC rules (the emulator records each request's verb)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tests.conftest import REPO
from tokenscale.local.emulator import RequestRecord

CHART = REPO / "charts" / "tokenscale"
# ClusterRoles aggregated into the built-in view/edit/admin roles are for people, not for a pod.
AGGREGATED = {f"rbac.authorization.k8s.io/aggregate-to-{role}" for role in ("view", "edit", "admin")}


def allows(rules: Iterable[dict[str, Any]], record: RequestRecord) -> bool:
    resource = record.resource + (f"/{record.subresource}" if record.subresource else "")
    return any(record.group in rule["apiGroups"] and resource in rule["resources"] and record.verb in rule["verbs"]
               for rule in rules)


def api_requests(records: list[RequestRecord]) -> list[RequestRecord]:
    """Resource requests (RBAC-checked); the rest must be discovery, which every user may read."""
    for record in records:
        if record.resource is None:
            assert record.method == "GET" and record.path.startswith(("/api", "/apis", "/version")), record
    return [r for r in records if r.resource is not None]
