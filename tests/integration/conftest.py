"""Integration harness: the Kubernetes emulator over real HTTP and the real operator (kopf).

Reuse from any test module under tests/integration:

- `cluster` (module scope): a fresh emulator on 127.0.0.1 with `.url`, `.kubeconfig` (a file),
  `.api` (a kubernetes ApiClient), `.emulator` (its request_log, live_objects) and helpers.
- `operator_settings` (module scope): the Settings the operator runs with; override this fixture
  in a module to change them (e.g. prometheus_url, tick_seconds).
- `operator` (module scope): the operator running in a background thread against `cluster`
  through the same code path as `tokenscale run` (`run_operator`); stopped at module end.
- `OperatorThread(settings)`: the same as a context manager, for tests that start their own.
- `wait_for(predicate, timeout)`: poll until a predicate returns a truthy value.

Each module gets its own emulator and operator, so one operator runs at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest

from tokenscale.api import GROUP, PLURAL, VERSION
from tokenscale.local.emulator import RunningEmulator, start_emulator
from tokenscale.settings import Settings

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.05,
             message: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except kubernetes.client.ApiException as error:
            last = error
            if error.status != 404:
                raise
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {message}; last value: {last!r}")


class Cluster:
    """One emulator, a kubeconfig for it, and typed clients."""

    def __init__(self, running: RunningEmulator, kubeconfig: Path):
        self.running = running
        self.emulator = running.emulator
        self.url = running.url
        self.kubeconfig = kubeconfig
        self.api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.apps = kubernetes.client.AppsV1Api(self.api)
        self.policy = kubernetes.client.PolicyV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)

    # --- InferenceServices (created through the HTTP API: the CRD schema is not enforced) ---

    def create_service(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def get_service(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def patch_service(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)

    def delete_service(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def condition(self, namespace: str, name: str, kind: str) -> dict[str, Any] | None:
        status = self.get_service(namespace, name).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)

    def events_for(self, namespace: str, name: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(namespace).items
                if e.involved_object and e.involved_object.name == name]

    def set_deployment_ready(self, namespace: str, name: str, ready: int) -> None:
        """Play the Deployment controller and kubelet: report `ready` pods of the current spec."""
        deployment = self.apps.read_namespaced_deployment(name, namespace)
        replicas = deployment.spec.replicas or 0
        self.apps.patch_namespaced_deployment_status(name, namespace, {"status": {
            "observedGeneration": deployment.metadata.generation, "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
        }})


class OperatorThread:
    """The operator (`tokenscale run`'s code path) in a background thread, until stopped."""

    def __init__(self, settings: Settings, startup_timeout: float = 20.0):
        self.settings = settings
        self.startup_timeout = startup_timeout
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="tokenscale-operator", daemon=True)

    def _main(self) -> None:
        from tokenscale.commands.run import run_operator

        try:
            run_operator(self.settings, stop_flag=self.stop_flag, ready_flag=self.ready_flag)
        except BaseException as error:  # surfaced by __enter__/__exit__
            self.error = error
            self.ready_flag.set()

    def __enter__(self) -> OperatorThread:
        self.thread.start()
        if not self.ready_flag.wait(self.startup_timeout) or self.error is not None:
            self.stop_flag.set()
            raise RuntimeError(f"the operator did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(30)
        if self.thread.is_alive():
            raise RuntimeError("the operator did not stop within 30 s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_emulator()
    try:
        kubeconfig = running.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
        yield Cluster(running, kubeconfig)
    finally:
        running.stop()


@pytest.fixture(scope="module")
def operator_settings(cluster: Cluster) -> Settings:
    """Override in a module to run the operator with other Settings (keep kubeconfig=cluster's)."""
    return Settings(kubeconfig=str(cluster.kubeconfig), standalone=True, liveness=None,
                    watch_server_timeout=60, watch_client_timeout=70, request_timeout=10,
                    log_level="DEBUG", log_format="plain", default_server_image="tokenscale/server:test")


@pytest.fixture(scope="module")
def operator(cluster: Cluster, operator_settings: Settings) -> Iterator[OperatorThread]:
    with OperatorThread(operator_settings) as running:
        yield running


def gone(read: Callable[[], Any]) -> bool:
    """The read answers 404 (the object is deleted); any other API error is raised."""
    try:
        read()
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return True
        raise
    return False
