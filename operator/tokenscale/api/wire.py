"""How values look on the Kubernetes API's wire: RFC 3339 stamps and the merge-patch content type.
One formatter for every timestamp tokenscale writes (conditions, status, annotations, the emulator)."""

from __future__ import annotations

import datetime
import time

MERGE_PATCH = "application/merge-patch+json"


def rfc3339(timestamp: float | None = None, *, millis: bool = False) -> str:
    """`timestamp` (default: now) in UTC as RFC 3339 with a Z: whole seconds, as metav1.Time
    writes them, or with milliseconds where sub-second order matters (the activation stamp)."""
    stamp = datetime.datetime.fromtimestamp(time.time() if timestamp is None else timestamp, datetime.UTC)
    return stamp.isoformat(timespec="milliseconds" if millis else "seconds").replace("+00:00", "Z")
