"""A local kubelet: each Deployment's replicas become `tokenscale-server` processes.

It stands in for the Deployment controller, the scheduler and the kubelet of a cluster. Four
times a second it lists the Deployments of its namespace through the API server's HTTP API,
starts or stops processes until each Deployment has `spec.replicas` of them, probes `/ready`
on each, and writes what a cluster would write back: the Deployment's status (replicas,
readyReplicas, availableReplicas, updatedReplicas, observedGeneration). Ready replicas are
published to the router (the Service's endpoints) and to Prometheus' file_sd targets, labelled
with the namespace and the pod's `tokenscale.io/service` label as the Prometheus Operator's
podTargetLabels would. Scale-down takes the replica out of both first, then sends SIGTERM and
lets it drain; after the grace period it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tokenscale.api.labels import PROMETHEUS_SERVICE_LABEL, SERVICE_LABEL
from tokenscale.api.wire import MERGE_PATCH
from tokenscale.local.children import ChildProcesses
from tokenscale.local.prometheus import ScrapeTarget, free_port

log = logging.getLogger(__name__)

# Prometheus label names: what podTargetLabels / the namespace relabeling produce in a cluster.
PROM_SERVICE_LABEL = PROMETHEUS_SERVICE_LABEL
PROM_NAMESPACE_LABEL = "namespace"

# How to run one replica of a Deployment: (deployment, port) -> argv.
CommandFor = Callable[[dict[str, Any], int], Sequence[str]]
TargetsSink = Callable[[list[ScrapeTarget]], None]  # e.g. PrometheusServer.set_targets
EndpointsSink = Callable[[dict[str, str]], None]


@dataclass
class Replica:
    deployment: str
    name: str
    port: int
    proc: subprocess.Popen
    labels: dict[str, str]
    started_at: float
    ready_at: float | None = None
    ready: bool = False
    terminating_since: float | None = None
    grace_seconds: float = 30.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class ScaleEvent:
    time: float  # monotonic
    deployment: str
    from_replicas: int
    to_replicas: int


@dataclass
class Kubelet:
    api_url: str
    namespace: str
    command_for: CommandFor
    children: ChildProcesses
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    publish_targets: TargetsSink | None = None
    publish_endpoints: EndpointsSink | None = None
    poll_seconds: float = 0.25
    grace_seconds: float = 30.0
    replicas: dict[str, list[Replica]] = field(default_factory=dict)  # deployment -> live replicas
    draining: list[Replica] = field(default_factory=list)
    desired: dict[str, int] = field(default_factory=dict)
    scale_events: list[ScaleEvent] = field(default_factory=list)
    restarts: int = 0
    unsupported: set[str] = field(default_factory=set)  # Deployments that cannot run here
    _finished_process_seconds: float = 0.0
    _serial: int = 0
    _published: tuple = ()
    _status_written: dict[str, dict[str, int]] = field(default_factory=dict)

    # --- accounting --------------------------------------------------------------------------

    def process_seconds(self, now: float | None = None) -> float:
        """Replica-process-seconds so far: the local stand-in for GPU-seconds (loading counts)."""
        now = time.monotonic() if now is None else now
        live = [r for rs in self.replicas.values() for r in rs] + self.draining
        return self._finished_process_seconds + sum(now - r.started_at for r in live)

    def counts(self, deployment: str) -> tuple[int, int]:
        """(ready, existing) replicas of a Deployment, terminating ones excluded."""
        live = self.replicas.get(deployment, [])
        return sum(r.ready for r in live), len(live)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                while True:
                    await self.sync_once(session)
                    await asyncio.sleep(self.poll_seconds)
            finally:
                await asyncio.shield(asyncio.to_thread(self.stop_all))

    async def sync_once(self, session: aiohttp.ClientSession) -> None:
        deployments = await self._list_deployments(session)
        if deployments is not None:
            for name in list(self.replicas):
                if name not in deployments:
                    self._scale_to(name, {}, 0)
            for name, deployment in deployments.items():
                self._reconcile(name, deployment)
        await self._probe(session)
        self._reap()
        self._publish()
        if deployments is not None:
            for name, deployment in deployments.items():
                await self._write_status(session, name, deployment)

    async def _list_deployments(self, session: aiohttp.ClientSession) -> dict[str, dict] | None:
        url = f"{self.api_url}/apis/apps/v1/namespaces/{self.namespace}/deployments"
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    log.warning("listing deployments: HTTP %s", response.status)
                    return None
                items = (await response.json()).get("items") or []
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("listing deployments: %s", exc)
            return None
        return {d["metadata"]["name"]: d for d in items if d.get("metadata", {}).get("namespace", self.namespace) == self.namespace}

    def _reconcile(self, name: str, deployment: dict) -> None:
        want = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
        if want != self.desired.get(name, 0):
            self.scale_events.append(ScaleEvent(time.monotonic(), name, self.desired.get(name, 0), want))
            self.desired[name] = want
        self._scale_to(name, deployment, want)

    def _scale_to(self, name: str, deployment: dict, want: int) -> None:
        live = self.replicas.setdefault(name, [])
        if want <= 0 and not deployment:
            self.desired.pop(name, None)
        while len(live) < want:
            try:
                live.append(self._start(name, deployment))
            except UnsupportedContainer as error:
                if name not in self.unsupported:
                    log.error("%s: %s", name, error)
                self.unsupported.add(name)
                break
        if len(live) > want:
            # Remove replicas that are not serving yet first, then the newest (as the ReplicaSet does).
            live.sort(key=lambda r: (not r.ready, r.started_at), reverse=True)
            for replica in live[: len(live) - want]:
                self._terminate(replica)
            del live[: len(live) - want]
        if not live and not deployment:
            self.replicas.pop(name, None)

    def _start(self, name: str, deployment: dict) -> Replica:
        self._serial += 1
        replica_name = f"{name}-{self._serial}"
        port = free_port()
        argv = list(self.command_for(deployment, port))
        labels = dict(((deployment.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {})
        env = {**os.environ, **_safe(container_env, deployment, {}), **self.env}
        proc = self.children.spawn(argv, log_path=self.log_dir / f"{replica_name}.log", env=env)
        log.info("started %s (pid %s) on port %s", replica_name, proc.pid, port)
        grace = _safe(grace_seconds_of, deployment, self.grace_seconds, self.grace_seconds)
        return Replica(name, replica_name, port, proc, labels, time.monotonic(), grace_seconds=grace)

    def _terminate(self, replica: Replica) -> None:
        replica.ready = False  # out of the endpoints and targets at once, as a terminating pod
        replica.terminating_since = time.monotonic()
        self.children.signal(replica.proc)  # SIGTERM: the server drains, then exits
        self.draining.append(replica)
        log.info("terminating %s (pid %s)", replica.name, replica.proc.pid)

    async def _probe(self, session: aiohttp.ClientSession) -> None:
        live = [r for rs in self.replicas.values() for r in rs]

        async def ready(replica: Replica) -> None:
            try:
                async with session.get(
                    f"http://{replica.address}/ready", timeout=aiohttp.ClientTimeout(total=1)
                ) as response:
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok and replica.ready_at is None:
                replica.ready_at = time.monotonic()
                log.info("%s ready after %.1f s", replica.name, replica.ready_at - replica.started_at)
            replica.ready = ok and replica.terminating_since is None

        await asyncio.gather(*(ready(r) for r in live))

    def _reap(self) -> None:
        now = time.monotonic()
        for live in self.replicas.values():
            for replica in [r for r in live if r.proc.poll() is not None]:
                # A crashed replica: the kubelet restarts it (on the next sync) as a new process.
                log.warning("%s exited with %s; restarting", replica.name, replica.proc.returncode)
                self.restarts += 1
                live.remove(replica)
                self._finish(replica, now)
        for replica in list(self.draining):
            if replica.proc.poll() is None and now - (replica.terminating_since or now) > replica.grace_seconds:
                self.children.signal(replica.proc, 9)  # past the grace period, as the kubelet does
            if replica.proc.poll() is not None:
                self.draining.remove(replica)
                self._finish(replica, now)

    def _finish(self, replica: Replica, now: float) -> None:
        self._finished_process_seconds += now - replica.started_at
        self.children.forget(replica.proc)

    def _publish(self) -> None:
        ready = [r for rs in self.replicas.values() for r in rs if r.ready]
        snapshot = tuple(sorted((r.name, r.address) for r in ready))
        if snapshot == self._published:
            return
        self._published = snapshot
        if self.publish_endpoints is not None:
            self.publish_endpoints({r.name: f"http://{r.address}" for r in ready})
        if self.publish_targets is not None:
            self.publish_targets(
                [
                    ScrapeTarget(
                        r.address,
                        {
                            PROM_NAMESPACE_LABEL: self.namespace,
                            PROM_SERVICE_LABEL: r.labels.get(SERVICE_LABEL, r.deployment),
                            "pod": r.name,
                        },
                    )
                    for r in ready
                ]
            )

    async def _write_status(self, session: aiohttp.ClientSession, name: str, deployment: dict) -> None:
        ready, existing = self.counts(name)
        status = {
            "replicas": existing,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": existing,
            "unavailableReplicas": max(0, existing - ready),
            "observedGeneration": int(deployment.get("metadata", {}).get("generation") or 1),
        }
        current = deployment.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()):
            return
        url = f"{self.api_url}/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}/status"
        headers = {"Content-Type": MERGE_PATCH}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.patch(url, json={"status": status}, headers=headers) as response:
                if response.status >= 400:
                    log.warning("status of %s: HTTP %s", name, response.status)

    # --- shutdown -------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every replica (SIGTERM, grace, SIGKILL). Blocking; safe to call twice."""
        every = [r for rs in self.replicas.values() for r in rs] + self.draining
        for replica in every:
            self.children.signal(replica.proc)
        now = time.monotonic()
        for replica in every:
            self.children.stop(replica.proc, grace_seconds=10)
            self._finished_process_seconds += now - replica.started_at
        self.replicas.clear()
        self.draining.clear()


class UnsupportedContainer(ValueError):
    """The Deployment runs something the local kubelet cannot run as a process here."""


def serving_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    if not containers:
        raise UnsupportedContainer("the Deployment's pod template has no container")
    return containers[0]


def local_server_command(
    deployment: dict[str, Any], port: int, executable: str, extra_args: Sequence[str] = ()
) -> list[str]:
    """The builtin server's container as a local process: its own command and arguments, with the
    executable found here, bound to 127.0.0.1 on `port` instead of the pod's port.

    Only the builtin engine runs locally (the others are GPU images).
    """
    container = serving_container(deployment)
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    if len(argv) < 2 or Path(argv[0]).name != "tokenscale-server" or argv[1] != "serve":
        raise UnsupportedContainer(
            f"the local kubelet runs only the builtin engine (tokenscale-server serve), not {argv[:2]}"
        )
    local = [executable, "serve"]
    rest = argv[2:]
    index = 0
    while index < len(rest):
        arg = rest[index]
        name = arg.split("=", 1)[0]
        if name in ("--host", "--port"):
            index += 1 if "=" in arg else 2  # replaced below
            continue
        local.append(arg)
        index += 1
    return [*local, "--host", "127.0.0.1", "--port", str(port), *extra_args]


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The container's literal environment variables (references to secrets cannot resolve here)."""
    env = serving_container(deployment).get("env") or []
    return {e["name"]: str(e["value"]) for e in env if "value" in e and "name" in e}


def grace_seconds_of(deployment: dict[str, Any], default: float) -> float:
    pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    return float(pod.get("terminationGracePeriodSeconds") or default)


def _safe(function: Callable[..., Any], deployment: dict[str, Any], fallback: Any, *args: Any) -> Any:
    try:
        return function(deployment, *args)
    except (UnsupportedContainer, KeyError, TypeError, ValueError):
        return fallback


