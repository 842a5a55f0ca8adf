"""Why a serving pod is not ready, from the pod alone (pure).

A pod that is loading its model is capacity on its way; a pod that cannot start is not, and the
user has to act. `classify_pod` tells the two apart from the pod's own status, the way
`kubectl describe pod` would show it: the container's waiting reason (CrashLoopBackOff,
ImagePullBackOff, ErrImagePull, CreateContainerConfigError, ...), its last termination
(OOMKilled, a kill after failed startup probes) and the scheduler's verdict (Unschedulable).
`PodHealth.of` counts the problems of one service's pods and words them as a condition reason and message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Waiting reasons of a container that will not start without a change by a person.
FAILING_WAITING = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                   "CreateContainerConfigError", "CreateContainerError", "RunContainerError")
UNSCHEDULABLE = "Unschedulable"
OOM_KILLED = "OOMKilled"
STARTUP_PROBE_FAILED = "StartupProbeFailed"
# A container killed by a signal (137 SIGKILL, 143 SIGTERM) before it ever started, this many
# times: the kubelet is restarting it because its startup probe never passed.
STARTUP_KILLS = 2
MESSAGE_LIMIT = 200  # characters of a termination message carried into a condition


@dataclass(frozen=True)
class PodProblem:
    """One pod that is not ready and will not become ready by waiting."""

    pod: str
    state: str  # CrashLoopBackOff, ImagePullBackOff, ..., OOMKilled, StartupProbeFailed, Unschedulable
    container: str = ""
    detail: str = ""  # the kubelet's or the scheduler's message, or the last termination message
    restarts: int = 0

    @property
    def failing(self) -> bool:
        """Cannot start (unschedulable pods are counted apart: they wait for a node, not a fix)."""
        return self.state != UNSCHEDULABLE


def truncate(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _termination(state: dict[str, Any] | None) -> str:
    terminated = (state or {}).get("terminated") or {}
    if not terminated:
        return ""
    code = terminated.get("exitCode")
    text = f"exit code {code}" if code is not None else "terminated"
    if terminated.get("reason") and terminated.get("reason") not in ("Error", "Completed"):
        text = f"{terminated['reason']}, {text}"
    message = terminated.get("message")
    return f"{text}: {message}" if message else text


def _container_problem(pod: str, status: dict[str, Any]) -> PodProblem | None:
    name = status.get("name", "")
    restarts = int(status.get("restartCount") or 0)
    state, last = status.get("state") or {}, status.get("lastState") or {}
    waiting = state.get("waiting") or {}
    last_terminated = last.get("terminated") or {}
    now_terminated = state.get("terminated") or {}
    if OOM_KILLED in (now_terminated.get("reason"), last_terminated.get("reason")):
        return PodProblem(pod, OOM_KILLED, name, truncate(_termination(state) or _termination(last)), restarts)
    killed = last_terminated.get("exitCode") in (137, 143)
    if restarts >= STARTUP_KILLS and killed and status.get("started") is False:
        return PodProblem(pod, STARTUP_PROBE_FAILED, name,
                          truncate(f"killed {restarts} times before its startup probe passed "
                                   f"(last: {_termination(last)})"), restarts)
    reason = waiting.get("reason")
    if reason in FAILING_WAITING:
        last_words = _termination(last)
        detail = last_words if reason == "CrashLoopBackOff" and last_words else waiting.get("message", "")
        return PodProblem(pod, reason, name, truncate(detail), restarts)
    return None


def classify_pod(pod: dict[str, Any]) -> PodProblem | None:
    """The pod's problem, or None when it is ready, loading, or on its way out."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or pod_ready(pod) or status.get("phase") in ("Succeeded", "Failed"):
        return None
    name = meta.get("name", "")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == UNSCHEDULABLE:
            return PodProblem(name, UNSCHEDULABLE, detail=truncate(condition.get("message", "")))
    for container in (*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])):
        problem = _container_problem(name, container)
        if problem is not None:
            return problem
    return None


@dataclass(frozen=True)
class PodHealth:
    """The problems of one service's pods, counted for the policy and worded for conditions."""

    failing: tuple[PodProblem, ...] = ()
    unschedulable: tuple[PodProblem, ...] = ()

    @classmethod
    def of(cls, problems: Iterable[PodProblem | None]) -> PodHealth:
        known = sorted((p for p in problems if p is not None), key=lambda p: p.pod)
        return cls(failing=tuple(p for p in known if p.failing),
                   unschedulable=tuple(p for p in known if not p.failing))

    @property
    def reason(self) -> str:
        """The most common failing state (ties: the first by pod name), '' when none fails."""
        if not self.failing:
            return ""
        counts = Counter(p.state for p in self.failing)
        return max(counts, key=lambda state: (counts[state], -[p.state for p in self.failing].index(state)))

    @property
    def message(self) -> str:
        """One line a person can act on: how many pods, which state, the container's last words."""
        if not self.failing:
            return ""
        first = next(p for p in self.failing if p.state == self.reason)
        where = f"pod {first.pod}" + (f" container {first.container}" if first.container else "")
        restarts = f", {first.restarts} restart(s)" if first.restarts else ""
        text = f"{len(self.failing)} pod(s) cannot start: {self.reason} ({where}{restarts})"
        return f"{text}: {first.detail}" if first.detail else text
