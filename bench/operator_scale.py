"""One autoscaling tick for 10, 100 and 1,000 InferenceServices against a real Prometheus.

For each count, a Prometheus TSDB is filled by `promtool tsdb create-blocks-from openmetrics`
with six minutes of 15 s scrapes of two pods per service (engines mixed: 70% vLLM names, 10%
each SGLang, TGI, TensorRT-LLM; half the vLLM pods under the escaped `vllm_` spelling), then
Debian's prometheus serves it and the operator's tick runs: one `PrometheusSource.read` for all
services followed by `policy.decide` for each. Measured per tick (median of several): queries
sent (counted by Prometheus itself), wall time, the operator's CPU time, Prometheus' CPU time,
and the operator's peak Python memory (tracemalloc, in a separate tick). Every service's
tokens/s is checked against the rate written into the data.

    python bench/operator_scale.py [--counts 10 100 1000] [--ticks 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from tokenscale.api.models import AutoscalingSpec
from tokenscale.engines.metric_names import metric_names
from tokenscale.local.prometheus import PrometheusServer, backfill, prometheus_binaries
from tokenscale.metrics.promql import Windows
from tokenscale.metrics.source import PrometheusConfig, PrometheusSource, ServiceRef
from tokenscale.policy import History, ReplicaState, decide

SCRAPE_SECONDS = 15
HISTORY_SECONDS = 360  # covers the 5 m long window
PODS_PER_SERVICE = 2
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def engine_of(index: int) -> str:
    return {7: "sglang", 8: "tgi", 9: "trtllm"}.get(index % 10, "vllm")


def pod_rate(service: int, pod: int) -> float:
    """Generated tokens/s of one pod: distinct per service so a mix-up would show."""
    return 100.0 + 7.0 * service + 50.0 * pod


def _families(engine: str, escaped: bool) -> dict[str, tuple[str, str]]:
    """kind and stored name (without suffixes) of each metric a pod of this engine exports."""
    names = metric_names(engine)

    def pick(spellings: tuple[str, ...]) -> str:
        if escaped:
            return next((n for n in spellings if ":" not in n), spellings[0])
        return spellings[0]

    if engine == "tgi":
        return {
            "generated": ("histogram", "tgi_request_generated_tokens"),
            "prompt": ("histogram", "tgi_request_input_length"),
            "queue": ("gauge", pick(names.queue_depth)),
            "running": ("gauge", pick(names.running_requests)),
        }
    return {
        "generated": ("counter", pick(names.generated_tokens).removesuffix("_total")),
        "prompt": ("counter", pick(names.prompt_tokens).removesuffix("_total")),
        "finished": ("counter", pick(names.finished_requests).removesuffix("_total")),
        "queue": ("gauge", pick(names.queue_depth)),
        "running": ("gauge", pick(names.running_requests)),
        "kv": ("gauge", pick(names.kv_cache_usage)),
        "ttft": ("histogram", pick(names.ttft_histogram)),
    }


def openmetrics(services: int, end: float) -> str:
    """Six minutes of scrapes of every pod, as one OpenMetrics text (families contiguous)."""
    times = [end - HISTORY_SECONDS + SCRAPE_SECONDS * k for k in range(HISTORY_SECONDS // SCRAPE_SECONDS + 1)]
    start = times[0]
    families: dict[str, tuple[str, list[str]]] = {}
    for index in range(services):
        engine = engine_of(index)
        for pod in range(PODS_PER_SERVICE):
            escaped = engine == "vllm" and index % 2 == 1
            labels = f'namespace="ns-{index % 20}",tokenscale_io_service="svc-{index}",instance="10.0.{index // 250}.{index % 250}:{8000 + pod}"'
            rate = pod_rate(index, pod)
            requests = rate / 100.0
            for role, (kind, name) in _families(engine, escaped).items():
                lines = families.setdefault(name, (kind, []))[1]
                for t in times:
                    elapsed = t - start + 3600.0  # counters started an hour earlier
                    if role == "generated" and kind == "counter":
                        lines.append(f"{name}_total{{{labels}}} {rate * elapsed:.3f} {t:.3f}")
                    elif role == "prompt" and kind == "counter":
                        lines.append(f"{name}_total{{{labels}}} {rate * 0.3 * elapsed:.3f} {t:.3f}")
                    elif role == "finished":
                        lines.append(f"{name}_total{{{labels}}} {requests * elapsed:.3f} {t:.3f}")
                    elif kind == "gauge":
                        value = {"queue": index % 3, "running": 8 + pod, "kv": 0.5}[role]
                        lines.append(f"{name}{{{labels}}} {value} {t:.3f}")
                    elif role == "ttft":
                        count = requests * elapsed
                        for le in TTFT_BUCKETS:
                            share = min(1.0, le / 2.0)
                            lines.append(f'{name}_bucket{{{labels},le="{le}"}} {count * share:.3f} {t:.3f}')
                        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {count:.3f} {t:.3f}')
                        lines.append(f"{name}_sum{{{labels}}} {count:.3f} {t:.3f}")
                        lines.append(f"{name}_count{{{labels}}} {count:.3f} {t:.3f}")
                    else:  # TGI token histograms: _sum is the tokens, _count the requests
                        tokens = (rate if role == "generated" else rate * 0.3) * elapsed
                        count = requests * elapsed
                        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {count:.3f} {t:.3f}')
                        lines.append(f"{name}_sum{{{labels}}} {tokens:.3f} {t:.3f}")
                        lines.append(f"{name}_count{{{labels}}} {count:.3f} {t:.3f}")
    out = []
    for name, (kind, lines) in families.items():
        out.append(f"# TYPE {name} {kind}")
        # OpenMetrics wants each series' samples together and in time order: sort by series, then time.
        lines.sort(key=lambda line: (line.rsplit(" ", 2)[0], float(line.rsplit(" ", 1)[1])))
        out.extend(lines)
    out.append("# EOF")
    return "\n".join(out) + "\n"


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tick(source: PrometheusSource, refs: list[ServiceRef], spec: AutoscalingSpec, at: float) -> dict:
    signals = source.read(refs, at=at)
    decisions = {
        ref.key: decide(signals[ref.key], spec, ReplicaState(current=2, ready=2), History(), at) for ref in refs
    }
    return {"signals": signals, "decisions": decisions}


def measure(services: int, ticks: int, workdir: Path) -> dict:
    end = float(int(time.time()) - 600)
    storage = workdir / f"tsdb-{services}"
    started = time.perf_counter()
    backfill(openmetrics(services, end), storage, workdir)
    backfill_seconds = time.perf_counter() - started
    refs = [ServiceRef(f"ns-{i % 20}", f"svc-{i}", engine_of(i)) for i in range(services)]
    spec = AutoscalingSpec(min_replicas=1, max_replicas=100, target_tokens_per_second_per_replica=400)
    at = end + 1.0
    prometheus = PrometheusServer(workdir / f"prom-{services}", storage=storage, scrape_interval=15)
    with prometheus:
        config = PrometheusConfig(url=prometheus.url, windows=Windows("1m", "5m"), timeout_seconds=30)
        source = PrometheusSource(config)
        first = tick(source, refs, spec, at)  # warm-up, also the correctness check
        errors = []
        for i, ref in enumerate(refs):
            expected = sum(pod_rate(i, pod) for pod in range(PODS_PER_SERVICE))
            got = first["signals"][ref.key].tokens_per_second
            errors.append(abs(got - expected) / expected if got is not None else float("inf"))
        walls, cpus, prom_cpus, queries = [], [], [], []
        assert prometheus._process is not None
        pid = prometheus._process.pid
        for _ in range(ticks):
            count_before, sent_before = prometheus.query_count(), source.queries_sent
            prom_before, cpu_before, wall_before = _process_cpu(pid), time.process_time(), time.perf_counter()
            tick(source, refs, spec, at)
            walls.append(time.perf_counter() - wall_before)
            cpus.append(time.process_time() - cpu_before)
            prom_cpus.append(_process_cpu(pid) - prom_before)
            counted = prometheus.query_count() - count_before
            assert counted == source.queries_sent - sent_before, "Prometheus and the source disagree"
            queries.append(counted)
        tracemalloc.start()
        tick(source, refs, spec, at)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        source.close()
    return {
        "services": services,
        "queries": max(queries),
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "prom_cpu": statistics.median(prom_cpus),
        "peak_mib": peak / 2**20,
        "max_error": max(errors),
        "backfill": backfill_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--ticks", type=int, default=5)
    args = parser.parse_args(argv)
    if prometheus_binaries() is None:
        print("skipped: needs Debian's prometheus and promtool (apt-get install prometheus)")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="tokenscale-bench-") as tmp:
        for count in args.counts:
            rows.append(measure(count, args.ticks, Path(tmp)))
            row = rows[-1]
            print(f"  {count} services measured (backfill {row['backfill']:.1f} s)", file=sys.stderr)
    header = (f"{'services':>8} {'queries/tick':>12} {'wall ms':>9} {'operator CPU ms':>15} "
              f"{'Prometheus CPU ms':>17} {'peak MiB':>9} {'max tok/s error':>15}")
    print(header)
    for row in rows:
        print(f"{row['services']:>8} {row['queries']:>12} {row['wall'] * 1000:>9.0f} {row['cpu'] * 1000:>15.0f} "
              f"{row['prom_cpu'] * 1000:>17.0f} {row['peak_mib']:>9.1f} {row['max_error']:>15.2%}")
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        ratio = large["services"] / small["services"]

        def times(key: str) -> str:
            return f"{large[key] / small[key]:.1f}x" if small[key] else "n/a"

        print(f"ratio {large['services']}/{small['services']} ({ratio:.0f}x the services): queries "
              f"{times('queries')}, wall {times('wall')}, operator CPU {times('cpu')}, Prometheus CPU "
              f"{times('prom_cpu')}, peak memory {times('peak_mib')}")
        verdict = "met" if large["queries"] == small["queries"] and large["wall"] < 2.0 else "NOT met"
        print(f"target (queries constant, {large['services']}-service tick < 2 s): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
