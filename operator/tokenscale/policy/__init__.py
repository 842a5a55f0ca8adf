"""tokenscale.policy: the scaling decision, pure and replayable (see docs/policy.md)."""

from .decide import decide
from .demand import replicas_for
from .history import history_from_status, history_to_status
from .types import Decision, DemandPoint, History, Recommendation, ReplicaState, Signals

__all__ = [
    "Decision",
    "DemandPoint",
    "History",
    "Recommendation",
    "ReplicaState",
    "Signals",
    "decide",
    "history_from_status",
    "history_to_status",
    "replicas_for",
]
