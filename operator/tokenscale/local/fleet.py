"""A synthetic fleet of serving pods behind one /metrics endpoint, for a real Prometheus to scrape.

Thousands of services cannot each run an exporter on one machine: this endpoint speaks for all
of them, one pod per service, with the vLLM metric names the builtin server exports and the
labels the Prometheus Operator would attach (`namespace`, `tokenscale_io_service`). Counters
grow at each service's rate from the moment it was set, so `rate()` reads the rate back.

    fleet = FleetExporter().start()
    fleet.set(("team", "chat"), tokens_per_second=150.0, queue_depth=0)
    prometheus.set_targets([ScrapeTarget(fleet.address)])
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class _Series:
    rate: float
    since: float
    base: float
    queue: float
    running: float

    def total(self, now: float) -> float:
        return self.base + self.rate * (now - self.since)


class FleetExporter:
    def __init__(self, clock=time.time):
        self.clock = clock
        self._series: dict[tuple[str, str], _Series] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.scrapes = 0

    def set(self, key: tuple[str, str], *, tokens_per_second: float, queue_depth: float = 0.0,
            running: float = 4.0) -> None:
        now = self.clock()
        with self._lock:
            old = self._series.get(key)
            base = old.total(now) if old else 3600.0 * tokens_per_second  # as if it had served an hour
            self._series[key] = _Series(tokens_per_second, now, base, queue_depth, running)

    def text(self) -> str:
        now = self.clock()
        with self._lock:
            items = sorted(self._series.items())
        families = {
            "vllm:generation_tokens_total": ("counter", lambda s: s.total(now)),
            "vllm:prompt_tokens_total": ("counter", lambda s: 0.3 * s.total(now)),
            "vllm:request_success_total": ("counter", lambda s: s.total(now) / 100.0),
            "vllm:num_requests_waiting": ("gauge", lambda s: s.queue),
            "vllm:num_requests_running": ("gauge", lambda s: s.running),
            "vllm:kv_cache_usage_perc": ("gauge", lambda s: 0.4),
        }
        lines = []
        for name, (kind, value) in families.items():
            lines.append(f"# TYPE {name.removesuffix('_total') if kind == 'counter' else name} {kind}")
            for (namespace, service), series in items:
                lines.append(f'{name}{{namespace="{namespace}",tokenscale_io_service="{service}",'
                             f'pod="{service}-0"}} {value(series):.3f}')
        return "\n".join(lines) + "\n"

    def start(self, host: str = "127.0.0.1") -> FleetExporter:
        fleet = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = fleet.text().encode()
                fleet.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                         name="fleet-exporter").start()
        return self

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# --- a fleet that exists already ---------------------------------------------------------------


def fleet_names(count: int, namespaces: int = 10) -> list[tuple[str, str]]:
    return [(f"team-{index % namespaces}", f"svc-{index}") for index in range(count)]


def seed(kubeconfig: str, names: list[tuple[str, str]], spec: dict, *, threads: int = 16,
         settings=None) -> None:
    """Create InferenceServices as an operator would have left them: children created and ready,
    status observed, kopf's record of the handled spec in place, so that an operator starting on
    them resumes (as after a restart or an upgrade) instead of creating them anew."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import kopf
    import kubernetes

    from tokenscale import reconcile
    from tokenscale.api import API_VERSION, GROUP, KIND, PLURAL, VERSION, parse_spec
    from tokenscale.handlers import kopf_settings
    from tokenscale.settings import Settings

    settings = settings or Settings(kubeconfig=kubeconfig)
    storage = kopf_settings(settings).persistence.diffbase_storage
    api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    api.configuration.connection_pool_maxsize = threads * 2
    custom, apps = kubernetes.client.CustomObjectsApi(api), kubernetes.client.AppsV1Api(api)
    core, policy = kubernetes.client.CoreV1Api(api), kubernetes.client.PolicyV1Api(api)
    parsed = parse_spec(spec)

    def one(key: tuple[str, str]) -> None:
        namespace, name = key
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace},
                "spec": spec}
        owner = json.loads(custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body,
                                                                  _preload_content=False).data)
        patch = kopf.Patch()
        storage.store(body=kopf.Body(owner), patch=patch, essence=storage.build(body=kopf.Body(owner)))
        owner = json.loads(custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"annotations": dict(patch["metadata"]["annotations"])}},
            _preload_content=False).data)
        wanted = reconcile.desired_children(settings, owner, parsed, None)
        reference = [reconcile.owner_reference(owner)]
        created = {}
        for child in (wanted.deployment, wanted.service, wanted.pod_disruption_budget):
            if child is None:
                continue
            child = {**child, "metadata": {**child["metadata"], "ownerReferences": reference}}
            create = {"Deployment": apps.create_namespaced_deployment, "Service": core.create_namespaced_service,
                      "PodDisruptionBudget": policy.create_namespaced_pod_disruption_budget}[child["kind"]]
            created[child["kind"]] = json.loads(create(namespace, child, _preload_content=False).data)
        deployment = created["Deployment"]
        replicas = deployment["spec"]["replicas"]
        deployment = json.loads(apps.patch_namespaced_deployment_status(name, namespace, {"status": {
            "observedGeneration": deployment["metadata"]["generation"], "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}},
            _preload_content=False).data)
        status = reconcile.observed_status(settings, owner, parsed, deployment)
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status},
                                                     _preload_content=False)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, names))
