"""1,000 InferenceServices, a 5 s tick, an API server that answers in 20 ms: every service's
`status.signals.sampledAt` is under two ticks old 30 s after the operator starts.

The real-cluster run of docs/operator.md saw p50 100 s with a 15 s tick: a per-service timer made
five synchronous requests per service and tick on four threads. Here the operator starts (as
after a restart or an upgrade) on 1,000 services whose children exist, and ticks the fleet; the
heartbeat is one tick, so every service is written every tick: the heaviest load.
The emulator's 20 ms per request (plus jitter) stands in for a loaded kube-apiserver; the real
Prometheus scrapes one endpoint that speaks for all the pods.
"""

from __future__ import annotations

import datetime
import time

import pytest

from tests.integration.conftest import Cluster, OperatorThread
from tokenscale.api import GROUP, PLURAL, VERSION
from tokenscale.local.emulator import KubernetesEmulator, serve
from tokenscale.local.fleet import FleetExporter, fleet_names, seed
from tokenscale.local.prometheus import PrometheusServer, ScrapeTarget
from tokenscale.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.timeout(240)]

SERVICES = 1000
TICK = 5.0
SPEC = {"model": {"source": "org/model"}, "engine": {"type": "builtin"}, "resources": {"gpus": 1},
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 8, "targetTokensPerSecondPerReplica": 1000}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = serve(KubernetesEmulator())
    try:
        yield Cluster(running, running.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config"))
    finally:
        running.stop()


def _age(stamp: str | None, now: float) -> float:
    if not stamp:
        return float("inf")
    return now - datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


def test_a_thousand_services_are_all_fresh_within_two_ticks(cluster, tmp_path):
    names = fleet_names(SERVICES)
    fleet = FleetExporter().start()
    for index, key in enumerate(names):
        fleet.set(key, tokens_per_second=100.0 + index % 400)
    seed(str(cluster.kubeconfig), names, SPEC)  # as an earlier operator left them: children ready
    cluster.emulator.latency, cluster.emulator.jitter = 0.02, 0.005  # from now on, a loaded API server
    settings = Settings(kubeconfig=str(cluster.kubeconfig), standalone=True, liveness=None, request_timeout=10,
                        watch_server_timeout=120, watch_client_timeout=130, log_level="WARNING", log_format="plain",
                        default_server_image="tokenscale/server:test", tick_seconds=TICK, heartbeat_ticks=1,
                        rate_window="10s", long_rate_window="20s")
    with PrometheusServer(tmp_path / "prometheus", scrape_interval=1.0) as prometheus:
        prometheus.set_targets([ScrapeTarget(fleet.address)])
        with OperatorThread(settings.replace(prometheus_url=prometheus.url), startup_timeout=60):
            time.sleep(30.0)
            listed = cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
            now = time.time()
    fleet.stop()
    assert len(listed) == SERVICES
    ages = sorted(_age(((item.get("status") or {}).get("signals") or {}).get("sampledAt"), now) for item in listed)
    stale = [a for a in ages if a >= 2 * TICK]
    assert not stale, (f"{len(stale)} of {SERVICES} services older than two ticks; ages p50 "
                       f"{ages[len(ages) // 2]:.1f} s, max {ages[-1]:.1f} s")
