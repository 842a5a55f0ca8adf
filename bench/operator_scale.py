"""The operator at fleet scale, as a cluster sees it: the real `tokenscale run` process against an
API server that answers in tens of milliseconds, with a real Prometheus.

For each count of InferenceServices (default 100, 1,000 and 10,000):
- the emulated API server runs in its own process, each request delayed by `--latency` plus up
  to `--jitter` (default 20 ms + 5 ms: a loaded kube-apiserver);
- one synthetic endpoint serves every pod's vLLM metrics; Debian's prometheus scrapes it;
- children: up to `--create-max` services are created while the operator runs, and the time
  until every Deployment and Service exists is measured; beyond that, the fleet is seeded as an
  earlier operator would have left it (children ready) before the operator starts;
- steady state, over `--ticks` ticks: API requests per tick by verb (counted by the API server),
  status writes per tick, the tick's wall time (the operator's own histogram), the p50 and p99
  age of status.signals.sampledAt, the operator's CPU seconds per second and RSS;
- then 10% of the services change their load (beyond the signal band): status writes per tick.

The OLD design (the per-service timer before the fleet tick, from git history: `--old-ref`,
default the commit before desired/tickplan.py was added) runs the same way at `--old-counts`, in
the same run, and the ratios are printed.

    python bench/operator_scale.py [--counts 100 1000 10000] [--old-counts 100 1000] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from tokenscale.local.emulator import KubernetesEmulator, request_counts, set_latency, start_emulator  # noqa: E402
from tokenscale.local.fleet import FleetExporter, fleet_names, seed  # noqa: E402
from tokenscale.local.prometheus import PrometheusServer, ScrapeTarget, free_port, prometheus_binaries  # noqa: E402
from tokenscale.settings import Settings  # noqa: E402

IMAGE = "tokenscale/server:bench"
SPEC = {"model": {"source": "org/model"}, "engine": {"type": "builtin"}, "resources": {"gpus": 1},
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 16,
                        "targetTokensPerSecondPerReplica": 1000}}


# --- the pieces -----------------------------------------------------------------------------------


def _emulator_main(kubeconfig: str, ready, stop) -> None:
    running = start_emulator(KubernetesEmulator())
    running.write_kubeconfig(kubeconfig)
    ready.set()
    stop.wait()
    running.stop()


class Emulator:
    """The API server in its own process (its CPU is not the operator's)."""

    def __init__(self, workdir: Path):
        self.kubeconfig = str(workdir / "kubeconfig")
        context = multiprocessing.get_context("spawn")
        self._ready, self._stop = context.Event(), context.Event()
        self._process = context.Process(target=_emulator_main, args=(self.kubeconfig, self._ready, self._stop),
                                        daemon=True)

    def __enter__(self) -> Emulator:
        self._process.start()
        if not self._ready.wait(60):
            raise RuntimeError("the emulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(15)
        if self._process.is_alive():
            self._process.kill()

    def counts(self) -> dict[str, int]:
        return request_counts(self.kubeconfig)["counts"]

    def client(self):
        import kubernetes

        api = kubernetes.config.new_client_from_config(config_file=self.kubeconfig)
        api.configuration.connection_pool_maxsize = 32
        return api


def old_tree(ref: str | None, workdir: Path) -> tuple[str, Path] | None:
    """The old design's sources (git archive of `ref`), or None outside a git checkout."""
    try:
        if ref is None:
            added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--",
                                    "operator/tokenscale/desired/tickplan.py"], cwd=REPO, capture_output=True,
                                   text=True, check=True).stdout.split()
            if not added:
                return None
            ref = added[-1] + "^"
        commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        target = workdir / f"old-{commit}"
        target.mkdir(exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "operator"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
        return commit, target / "operator"
    except (OSError, subprocess.CalledProcessError):
        return None


class Operator:
    """`tokenscale run` as a child process, from the given sources."""

    def __init__(self, sources: Path, kubeconfig: str, prometheus_url: str, tick: float, workdir: Path,
                 extra: list[str]):
        self.port = free_port()
        self.log = open(workdir / f"operator-{self.port}.log", "w")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(sources)}
        command = [sys.executable, "-c", "import sys; from tokenscale.cli import main; sys.exit(main())", "run",
                   "--kubeconfig", kubeconfig, "--standalone", "--liveness", "", "--metrics-address",
                   f"127.0.0.1:{self.port}", "--prometheus-url", prometheus_url, "--tick-seconds", str(tick),
                   "--rate-window", "10s", "--long-rate-window", "30s", "--log-level", "WARNING",
                   "--log-format", "plain", "--default-server-image", IMAGE, "--request-timeout", "10", *extra]
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
                text = response.read().decode()
        except OSError:
            return {}
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(("tokenscale_tick_duration_seconds_sum", "tokenscale_tick_duration_seconds_count")):
                name, value = line.split()
                values[name] = float(value)
        return values

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


# --- measuring ----------------------------------------------------------------------------------


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in after if after.get(key, 0) - before.get(key, 0)}


def _by_verb(delta: dict[str, int], ticks: float) -> dict[str, float]:
    verbs: dict[str, float] = {}
    for key, count in delta.items():
        verb, resource = key.split(" ", 1)
        if verb in ("list",) and resource in ("inferenceservices", "deployments", "services", "pods",
                                              "customresourcedefinitions"):
            continue  # the watches (a watch is a GET of a collection) and the bench's own lists
        verbs[verb] = round(verbs.get(verb, 0) + count / ticks, 1)
    return verbs


def _ages(api, now: float) -> list[float]:
    import kubernetes

    items = kubernetes.client.CustomObjectsApi(api).list_cluster_custom_object(
        "tokenscale.io", "v1alpha1", "inferenceservices", _request_timeout=120)["items"]
    ages = []
    for item in items:
        stamp = ((item.get("status") or {}).get("signals") or {}).get("sampledAt")
        if stamp:
            at = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
            ages.append(now - at)
        else:
            ages.append(float("inf"))
    return sorted(ages)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    value = values[min(len(values) - 1, int(q * len(values)))]
    return round(value, 1) if value != float("inf") else None


def _count_children(api) -> tuple[int, int]:
    import kubernetes

    apps, core = kubernetes.client.AppsV1Api(api), kubernetes.client.CoreV1Api(api)
    deployments = len(json.loads(apps.list_deployment_for_all_namespaces(
        _preload_content=False, _request_timeout=120).data)["items"])
    services = len(json.loads(core.list_service_for_all_namespaces(
        label_selector="app.kubernetes.io/managed-by=tokenscale", _preload_content=False,
        _request_timeout=120).data)["items"])
    return deployments, services


def measure(design: str, sources: Path, count: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"design": design, "services": count}
    names = fleet_names(count)
    fleet = FleetExporter().start()
    for index, key in enumerate(names):
        fleet.set(key, tokens_per_second=200.0 + 10.0 * (index % 200))
    settings = Settings(kubeconfig="", default_server_image=IMAGE)
    run_dir = workdir / f"{design}-{count}"
    run_dir.mkdir()
    with Emulator(run_dir) as emulator, PrometheusServer(run_dir / "prometheus", scrape_interval=2.0) as prometheus:
        prometheus.set_targets([ScrapeTarget(fleet.address)])
        api = emulator.client()
        create = count <= args.create_max
        if not create:
            started = time.perf_counter()
            seed(emulator.kubeconfig, names, SPEC, settings=settings.replace(kubeconfig=emulator.kubeconfig))
            print(f"  {design} {count}: seeded the fleet in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        set_latency(emulator.kubeconfig, args.latency, args.jitter)
        extra = ["--heartbeat-ticks", str(args.heartbeat_ticks)] if design == "new" else []
        operator = Operator(sources, emulator.kubeconfig, prometheus.url, args.tick, run_dir, extra)
        try:
            time.sleep(3.0)
            started = time.perf_counter()
            if create:
                import kubernetes

                custom = kubernetes.client.CustomObjectsApi(api)

                def one(key: tuple[str, str]) -> None:
                    custom.create_namespaced_custom_object(
                        "tokenscale.io", "v1alpha1", key[0], "inferenceservices",
                        {"apiVersion": "tokenscale.io/v1alpha1", "kind": "InferenceService",
                         "metadata": {"name": key[1], "namespace": key[0]}, "spec": SPEC}, _preload_content=False)

                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(16) as pool:
                    list(pool.map(one, names))
                row["children_ready_seconds"] = None
                while time.perf_counter() - started < args.create_timeout:
                    deployments, services = _count_children(api)
                    if deployments >= count and services >= count:
                        row["children_ready_seconds"] = round(time.perf_counter() - started, 1)
                        break
                    time.sleep(1.0)
                else:
                    row["children_created_in_timeout"] = _count_children(api)[0]
                print(f"  {design} {count}: children in {row['children_ready_seconds']} s", file=sys.stderr)
            else:
                row["children_ready_seconds"] = None
            # Let the fleet settle: every service decided and written once at least.
            time.sleep(args.tick * (args.heartbeat_ticks + 2))
            before, cpu_before, wall_before = emulator.counts(), operator.cpu_seconds(), time.perf_counter()
            metrics_before = operator.metrics()
            time.sleep(args.tick * args.ticks)
            after, cpu_after, wall_after = emulator.counts(), operator.cpu_seconds(), time.perf_counter()
            metrics_after = operator.metrics()
            ticks = (wall_after - wall_before) / args.tick
            delta = _delta(after, before)
            row["api_requests_per_tick"] = _by_verb(delta, ticks)
            row["status_writes_per_tick"] = round(delta.get("patch inferenceservices/status", 0) / ticks, 1)
            sums = [metrics_after.get(k, 0) - metrics_before.get(k, 0) for k in (
                "tokenscale_tick_duration_seconds_sum", "tokenscale_tick_duration_seconds_count")]
            row["tick_wall_seconds"] = round(sums[0] / sums[1], 2) if design == "new" and sums[1] else None
            ages = _ages(api, time.time())
            row["sampled_at_age_p50_seconds"] = _percentile(ages, 0.5)
            row["sampled_at_age_p99_seconds"] = _percentile(ages, 0.99)
            row["never_sampled"] = sum(1 for a in ages if a == float("inf"))
            row["operator_cpu_per_second"] = round((cpu_after - cpu_before) / (wall_after - wall_before), 2)
            row["operator_rss_mb"] = round(operator.rss_mb(), 1)
            # 10% of the services change their load beyond the band.
            changed = names[:: 10]
            for index, key in enumerate(changed):
                fleet.set(key, tokens_per_second=(200.0 + 10.0 * (index % 200)) * 1.6)
            time.sleep(args.tick * 2 + 2 * 2.0)  # the rate window sees it within a scrape or two
            before = emulator.counts()
            time.sleep(args.tick * 2)
            delta = _delta(emulator.counts(), before)
            row["status_writes_per_tick_10pct_changed"] = round(delta.get("patch inferenceservices/status", 0) / 2, 1)
        finally:
            operator.stop()
            fleet.stop()
    print(f"  {design} {count}: {json.dumps(row)}", file=sys.stderr)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--old-counts", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--old-ref", default=None, help="git revision of the old design")
    parser.add_argument("--latency", type=float, default=0.020, help="seconds per API request")
    parser.add_argument("--jitter", type=float, default=0.005, help="up to this much more, uniformly")
    parser.add_argument("--tick", type=float, default=5.0)
    parser.add_argument("--heartbeat-ticks", type=int, default=4)
    parser.add_argument("--ticks", type=int, default=6, help="ticks measured at steady state")
    parser.add_argument("--create-max", type=int, default=1000,
                        help="largest fleet whose children the operator creates (larger: seeded)")
    parser.add_argument("--create-timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    args = parser.parse_args(argv)
    if prometheus_binaries() is None:
        print("skipped: needs Debian's prometheus and promtool (apt-get install prometheus)")
        return 0
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tokenscale-operator-bench-") as tmp:
        workdir = Path(tmp)
        for count in args.counts:
            rows.append(measure("new", REPO / "operator", count, args, workdir))
        old = old_tree(args.old_ref, workdir) if args.old_counts else None
        if old is not None:
            commit, sources = old
            for count in args.old_counts:
                row = measure("old", sources, count, args, workdir)
                row["ref"] = commit
                rows.append(row)
    header = (f"{'design':>6} {'services':>8} {'tick s':>7} {'req/tick':>9} {'writes/tick':>11} {'10% chg':>8} "
              f"{'age p50':>8} {'age p99':>8} {'children s':>10} {'CPU/s':>6} {'RSS MB':>7}")
    print(header)
    for row in rows:
        requests = sum(row["api_requests_per_tick"].values())

        def show(value: Any, width: int) -> str:
            return f"{'-' if value is None else value:>{width}}"

        print(f"{row['design']:>6} {row['services']:>8} {show(row['tick_wall_seconds'], 7)} {requests:>9.1f} "
              f"{row['status_writes_per_tick']:>11} {row['status_writes_per_tick_10pct_changed']:>8} "
              f"{show(row['sampled_at_age_p50_seconds'], 8)} {show(row['sampled_at_age_p99_seconds'], 8)} "
              f"{show(row['children_ready_seconds'], 10)} {row['operator_cpu_per_second']:>6} "
              f"{row['operator_rss_mb']:>7}")
    for count in args.old_counts:
        new = next((r for r in rows if r["design"] == "new" and r["services"] == count), None)
        old_row = next((r for r in rows if r["design"] == "old" and r["services"] == count), None)
        if new is None or old_row is None:
            continue

        def ratio(key: str, old_row: dict = old_row, new: dict = new) -> str:
            a, b = old_row.get(key), new.get(key)
            return f"{a / b:.1f}x" if a and b else "n/a"

        old_requests, new_requests = (sum(r["api_requests_per_tick"].values()) for r in (old_row, new))
        print(f"ratio old/new at {count}: API requests per tick "
              f"{old_requests / new_requests if new_requests else float('inf'):.1f}x, status writes per tick "
              f"{ratio('status_writes_per_tick')}, sampledAt p50 {ratio('sampled_at_age_p50_seconds')}, "
              f"children {ratio('children_ready_seconds')}, RSS {ratio('operator_rss_mb')}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    steady = statistics.mean(r["status_writes_per_tick"] for r in rows if r["design"] == "new") if rows else 0
    print(f"new design, mean status writes per tick at steady state: {steady:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
