"""The whole autoscaling loop: real kopf, the emulated API, a real Prometheus, fixture pods.

A small stand-in for the Deployment controller and kubelet (`PodPool`) turns the Deployment's
replica count into running fixture exporters (one per pod, the load split evenly) and marks
them ready. Every pod of the pool is a Prometheus target from the start; a pod that is not
running answers 503, so its series go stale as a stopped pod's would. Short windows: 1 s
ticks and scrapes, 3 s / 6 s rate windows, a 6 s scale-down stabilisation window.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.exporters import EngineExporter
from tests.integration.conftest import wait_for
from tokenscale.local.prometheus import PrometheusServer, ScrapeTarget
from tokenscale.settings import Settings

pytestmark = [pytest.mark.prometheus, pytest.mark.usefixtures("operator")]

NAMESPACE = "loop"
MAX_REPLICAS = 4
SCALE_DOWN_WINDOW = 6
PER_REPLICA = 100.0  # target tokens/s per replica


def _autoscaling(**changes):
    spec = {
        "minReplicas": 1, "maxReplicas": MAX_REPLICAS, "targetTokensPerSecondPerReplica": PER_REPLICA,
        "targetQueueDepthPerReplica": 50, "tolerance": 0.1,
        "scaleUp": {"stabilizationSeconds": 0, "maxStepPercent": 100, "maxStepPods": 4},
        "scaleDown": {"stabilizationSeconds": SCALE_DOWN_WINDOW, "maxStepPercent": 100, "maxStepPods": 4},
        "metricsStaleAfterSeconds": 10,
    }
    spec.update(changes)
    return spec


def _spec(**autoscaling):
    return {"model": {"source": "org/tiny"}, "engine": {"type": "builtin"}, "resources": {"gpus": 1},
            "replicas": 1, "costPerGpuHour": 2.0, "autoscaling": _autoscaling(**autoscaling)}


class PodPool:
    """Plays Deployment controller and kubelet for one service: `replicas` pods run and are ready."""

    def __init__(self, cluster, name: str, size: int, schedulable: int | None = None):
        self.cluster, self.name = cluster, name
        self.schedulable = size if schedulable is None else schedulable  # pods beyond never run
        self.pods = [EngineExporter("builtin").start() for _ in range(size)]
        for pod in self.pods:
            pod.serving = False
        self.load = 0.0
        self.running = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"pods-{name}")

    def targets(self) -> list[ScrapeTarget]:
        labels = {"namespace": NAMESPACE, "tokenscale_io_service": self.name}
        return [ScrapeTarget(pod.address, labels) for pod in self.pods]

    def set_load(self, tokens_per_second: float) -> None:
        with self._lock:
            self.load = tokens_per_second
            self._spread()

    def _spread(self) -> None:
        for index, pod in enumerate(self.pods):
            share = self.load / self.running if index < self.running else 0.0
            pod.set_load(tokens_per_second=share, running=min(share / 20.0, 8), queue_depth=0, kv_cache_usage=0.3)
            pod.serving = index < self.running

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                deployment = self.cluster.apps.read_namespaced_deployment(self.name, NAMESPACE)
            except Exception:  # not created yet
                continue
            wanted = min(deployment.spec.replicas or 0, len(self.pods), self.schedulable)
            if wanted != self.running or (deployment.status.ready_replicas or 0) != wanted:
                with self._lock:
                    self.running = wanted
                    self._spread()
                self.cluster.set_deployment_ready(NAMESPACE, self.name, ready=wanted)

    def start(self) -> PodPool:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        for pod in self.pods:
            pod.stop()


@pytest.fixture(scope="module")
def pools(cluster):
    made = {"chat": PodPool(cluster, "chat", MAX_REPLICAS), "dry": PodPool(cluster, "dry", 2),
            "starved": PodPool(cluster, "starved", 1), "sleepy": PodPool(cluster, "sleepy", 1)}
    yield made
    for pool in made.values():
        pool.stop()


@pytest.fixture(scope="module")
def gateway():
    """Demand that waits outside the pods (a gateway's queue): what wakes a service at zero."""
    exporter = EngineExporter("vllm").start()
    yield exporter
    exporter.stop()


@pytest.fixture(scope="module")
def prometheus(pools, gateway, tmp_path_factory):
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), scrape_interval=1.0)
    targets = [target for pool in pools.values() for target in pool.targets()]
    targets.append(ScrapeTarget(gateway.address, {"namespace": "gateway", "tokenscale_io_service": "gateway"}))
    server.set_targets(targets)
    with server:
        yield server


@pytest.fixture(scope="module")
def metrics_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def operator_settings(cluster, prometheus, metrics_port) -> Settings:
    return Settings(metrics_address=f"127.0.0.1:{metrics_port}",kubeconfig=str(cluster.kubeconfig), standalone=True, liveness=None,
                    watch_server_timeout=60, watch_client_timeout=70, request_timeout=10,
                    log_level="INFO", log_format="plain", default_server_image="tokenscale/server:test",
                    prometheus_url=prometheus.url, prometheus_timeout=2.0, tick_seconds=1.0,
                    rate_window="3s", long_rate_window="6s")


def _replicas(cluster, name: str) -> int:
    return cluster.apps.read_namespaced_deployment(name, NAMESPACE).spec.replicas


def _status(cluster, name: str) -> dict:
    return cluster.get_service(NAMESPACE, name).get("status") or {}


def _condition(cluster, name: str, kind: str) -> dict:
    return cluster.condition(NAMESPACE, name, kind) or {}


def _operator_metric(port: int, metric: str, name: str = "chat") -> float | None:
    """One sample of the operator's own /metrics, scraped over HTTP as Prometheus would."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and sample.labels.get("name", name) == name \
                    and sample.labels.get("namespace", NAMESPACE) == NAMESPACE:
                return sample.value
    return None


def test_tokens_up_scales_up_outage_holds_recovery_scales_down(cluster, pools, prometheus, metrics_port):
    chat = pools["chat"].start()
    chat.set_load(50.0)
    cluster.create_service(NAMESPACE, "chat", _spec())
    wait_for(lambda: chat.running == 1, timeout=20, message="the first pod")
    wait_for(lambda: _condition(cluster, "chat", "MetricsAvailable").get("status") == "True",
             timeout=30, message="signals from Prometheus")
    # The first reads come while the rate window fills; then the pods' rate shows.
    wait_for(lambda: _status(cluster, "chat").get("signals", {}).get("tokensPerSecond") == pytest.approx(50.0, rel=0.05),
             timeout=10, message="tokens/s of the fixture pods")
    assert _replicas(cluster, "chat") == 1
    assert _condition(cluster, "chat", "ScalingActive")["status"] == "True"
    # The operator's own endpoint (a tick records it just after writing status).
    wait_for(lambda: _operator_metric(metrics_port, "tokenscale_metrics_available") == 1, timeout=5,
             message="tokenscale_metrics_available 1")
    assert _operator_metric(metrics_port, "tokenscale_desired_replicas") == 1

    # More demand: 280 tok/s needs 3 replicas of 100.
    chat.set_load(280.0)
    wait_for(lambda: _replicas(cluster, "chat") >= 3, timeout=15, message="a scale-up")
    assert _replicas(cluster, "chat") == 3
    up = wait_for(lambda: [d for d in _status(cluster, "chat").get("decisions", []) if d["toReplicas"] == 3
                           and d["fromReplicas"] < 3], message="the scale-up recorded")
    assert up[-1]["recommendations"]["tokens"] == 3 and "-> 3" in up[-1]["reason"]  # "Scaling" or "Panic: scaling"
    assert _status(cluster, "chat")["lastScaleTime"]
    events = wait_for(lambda: [e for e in cluster.events_for(NAMESPACE, "chat") if e.reason == "ScaledUp"],
                      message="a ScaledUp event")
    assert "-> 3" in events[-1].message  # 1 -> 3 at once, or via 2 while the rate window fills
    # The operator's own endpoint tells the same story.
    wait_for(lambda: _operator_metric(metrics_port, "tokenscale_desired_replicas") == 3, timeout=5,
             message="tokenscale_desired_replicas 3")
    assert _operator_metric(metrics_port, "tokenscale_scale_events_total") >= 1
    assert _operator_metric(metrics_port, "tokenscale_prometheus_queries_total") > 0
    wait_for(lambda: chat.running == 3 and (_status(cluster, "chat").get("costPerMillionTokens") or 0) > 0,
             message="cost per million tokens")

    # Prometheus goes away and the load drops: nothing may read the silence as zero demand.
    prometheus.stop()
    chat.set_load(30.0)
    wait_for(lambda: _condition(cluster, "chat", "MetricsAvailable").get("status") == "False",
             timeout=10, message="MetricsAvailable=False")
    condition = _condition(cluster, "chat", "MetricsAvailable")
    assert condition["reason"] == "PrometheusUnavailable" and "unreachable" in condition["message"]
    assert _condition(cluster, "chat", "ScalingActive")["status"] == "False"
    wait_for(lambda: _operator_metric(metrics_port, "tokenscale_metrics_available") == 0,
             timeout=5, message="tokenscale_metrics_available 0")
    assert _operator_metric(metrics_port, "tokenscale_prometheus_errors_total") > 0
    held_since = time.monotonic()
    while time.monotonic() - held_since < SCALE_DOWN_WINDOW + 2:
        assert _replicas(cluster, "chat") == 3, "replicas changed while metrics were unavailable"
        time.sleep(0.5)

    # Prometheus returns: metrics recover, and after the stabilisation window the replicas fall.
    prometheus.start()
    wait_for(lambda: _condition(cluster, "chat", "MetricsAvailable").get("status") == "True",
             timeout=30, message="MetricsAvailable=True again")
    recovered = time.monotonic()
    wait_for(lambda: _replicas(cluster, "chat") == 1, timeout=SCALE_DOWN_WINDOW + 15, message="a scale-down")
    # The holds recorded during the outage keep the window closed: not on the first good tick.
    assert time.monotonic() - recovered >= SCALE_DOWN_WINDOW / 2, "scaled down inside the stabilisation window"
    down = wait_for(lambda: [d for d in _status(cluster, "chat")["decisions"] if d["toReplicas"] < d["fromReplicas"]],
                    message="the scale-down recorded")
    assert down[-1]["fromReplicas"] == 3 and down[-1]["toReplicas"] == 1
    assert wait_for(lambda: [e for e in cluster.events_for(NAMESPACE, "chat") if e.reason == "ScaledDown"],
                    message="a ScaledDown event")


def test_dry_run_recommends_but_never_acts(cluster, pools):
    dry = pools["dry"].start()
    dry.set_load(350.0)
    cluster.create_service(NAMESPACE, "dry", _spec(mode="DryRun"))
    # 350 tok/s at 100 each: 4 replicas (once the rate window has filled).
    status = wait_for(lambda: _status(cluster, "dry").get("recommendedReplicas") == 4 and _status(cluster, "dry"),
                      timeout=30, message="a recommendation of 4")
    assert _replicas(cluster, "dry") == 1 and status["desiredReplicas"] == 1
    condition = _condition(cluster, "dry", "ScalingActive")
    assert condition["status"] == "False" and condition["reason"] == "DryRun"
    assert not [e for e in cluster.events_for(NAMESPACE, "dry") if e.reason in ("ScaledUp", "ScaledDown")]


def test_one_prometheus_read_per_tick_for_all_services(cluster, pools, prometheus):
    # Both services above tick every second; each read is one query per signal of the vLLM
    # family they share. Reads shared per tick cost about one read a second, not one per service.
    from tokenscale.engines.metric_names import metric_names
    from tokenscale.metrics.promql import Grouping, Windows, signal_queries

    per_read = len(signal_queries(metric_names("builtin"), Windows("3s", "6s"), Grouping()))
    before, started = prometheus.query_count(), time.monotonic()
    time.sleep(6.0)
    reads = (prometheus.query_count() - before) / per_read
    elapsed = time.monotonic() - started
    assert 0 < reads <= elapsed / 1.0 + 2, f"{reads:g} reads in {elapsed:.1f} s for 2 services"


def test_manual_mode_applies_spec_replicas_and_kubectl_scale(cluster):
    from tokenscale.api import GROUP, PLURAL, VERSION

    cluster.create_service(NAMESPACE, "manual", _spec(enabled=False))
    wait_for(lambda: _replicas(cluster, "manual") == 1, message="the Deployment")
    condition = wait_for(lambda: _condition(cluster, "manual", "ScalingActive"), message="ScalingActive")
    assert condition["status"] == "False" and condition["reason"] == "AutoscalingDisabled"
    # `kubectl scale tsvc manual --replicas 3` writes the scale subresource.
    cluster.custom.patch_namespaced_custom_object_scale(GROUP, VERSION, NAMESPACE, PLURAL, "manual",
                                                        {"spec": {"replicas": 3}})
    wait_for(lambda: _replicas(cluster, "manual") == 3, message="spec.replicas applied")
    cluster.set_deployment_ready(NAMESPACE, "manual", ready=3)
    scale = wait_for(lambda: (s := cluster.custom.get_namespaced_custom_object_scale(
        GROUP, VERSION, NAMESPACE, PLURAL, "manual"))["status"].get("replicas") == 3 and s, message="scale status")
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["selector"] == "app.kubernetes.io/instance=manual,tokenscale.io/service=manual"


def test_unschedulable_pods_stop_scale_up_and_raise_scaling_limited(cluster, pools):
    starved = pools["starved"].start()  # one pod fits; the cluster has no GPU for more
    starved.set_load(250.0)
    cluster.create_service(NAMESPACE, "starved", _spec())
    wait_for(lambda: _replicas(cluster, "starved") >= 2, timeout=30, message="a scale-up")
    # The scheduler's verdict on the pods that did not fit, as a real cluster would show it.
    for index in range(_replicas(cluster, "starved") - 1):
        pod = f"starved-pending-{index}"
        cluster.core.create_namespaced_pod(NAMESPACE, {
            "metadata": {"name": pod, "labels": {"tokenscale.io/service": "starved"}},
            "spec": {"containers": [{"name": "server", "image": "tokenscale/server:test"}]}})
        cluster.core.patch_namespaced_pod_status(pod, NAMESPACE, {"status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}})
    starved.set_load(600.0)  # far more demand: more replicas would not help
    condition = wait_for(lambda: _condition(cluster, "starved", "ScalingLimited").get("status") == "True"
                         and _condition(cluster, "starved", "ScalingLimited"), timeout=15, message="ScalingLimited")
    assert condition["reason"] == "Unschedulable" and "cannot be scheduled" in condition["message"]
    held = _replicas(cluster, "starved")
    time.sleep(3.0)
    assert _replicas(cluster, "starved") == held


def test_idle_service_scales_to_zero_and_the_activation_query_wakes_it(cluster, pools, gateway):
    sleepy = pools["sleepy"].start()
    sleepy.set_load(0.0)
    gateway.set_load(queue_depth=0)
    activation = {"query": 'sum(vllm:num_requests_waiting{tokenscale_io_service="gateway"})'}
    cluster.create_service(NAMESPACE, "sleepy", _spec(minReplicas=0, scaleToZeroAfterSeconds=2, activation=activation))
    wait_for(lambda: _replicas(cluster, "sleepy") == 1, message="the first replica")
    wait_for(lambda: _replicas(cluster, "sleepy") == 0, timeout=30, message="a scale to zero")
    record = wait_for(lambda: [d for d in _status(cluster, "sleepy")["decisions"] if d["toReplicas"] == 0],
                      message="the decision recorded")[0]
    assert (record["fromReplicas"], record["toReplicas"], record["limitedBy"]) == (1, 0, "scaleToZero")
    time.sleep(2.0)
    assert _replicas(cluster, "sleepy") == 0  # no pod, no metrics, and nothing waits: it stays down
    gateway.set_load(queue_depth=3)  # requests wait at the gateway
    wait_for(lambda: _replicas(cluster, "sleepy") == 1, timeout=15, message="a wake-up")
    status = wait_for(lambda: (s := _status(cluster, "sleepy"))["decisions"][-1]["limitedBy"] == "activation" and s,
                      message="the wake-up recorded")
    assert status["decisions"][-1]["fromReplicas"] == 0 and status["signals"]["activation"] == 3
