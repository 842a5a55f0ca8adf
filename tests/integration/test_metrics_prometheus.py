"""Signals from a REAL Prometheus scraping fixture exporters that speak each engine's names.

One Prometheus (Debian's binary, a child process on 127.0.0.1, 1 s scrapes through file_sd)
scrapes fake pods of several services in two namespaces: vLLM/builtin, SGLang, TGI and
TensorRT-LLM names, under either spelling, both at once, or as prometheus_client's own
content negotiation leaves them. The signals tokenscale.metrics reads per service must match
the rates the fixtures emit within 5%, with one query per signal for all services.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.fixtures.exporters import EngineExporter
from tokenscale.engines.metric_names import metric_names
from tokenscale.local.prometheus import PrometheusServer, ScrapeTarget, free_port
from tokenscale.metrics.promql import Grouping, Windows, signal_queries
from tokenscale.metrics.source import MetricsUnavailable, PrometheusConfig, PrometheusSource, ServiceRef

pytestmark = pytest.mark.prometheus

WINDOWS = Windows(short="4s", long="6s")

# service -> (engine, [(spelling, tokens/s, prompt tokens/s, queue, running, kv use)] one per pod)
PODS = {
    ("team-a", "llama"): ("vllm", [("exported", 300.0, 90.0, 2, 5, 0.25), ("exported", 500.0, 110.0, 3, 7, 0.75)]),
    ("team-a", "qwen"): ("builtin", [("escaped", 120.0, 40.0, 0, 3, 0.5)]),
    ("team-a", "dup"): ("vllm", [("both", 250.0, 50.0, 4, 6, 0.6)]),
    ("team-a", "negotiated"): ("vllm", [("negotiated", 180.0, 30.0, 1, 2, 0.1)]),
    ("team-b", "sg"): ("sglang", [("exported", 700.0, 300.0, 6, 16, 0.8), ("escaped", 100.0, 20.0, 1, 4, 0.4)]),
    ("team-b", "tg"): ("tgi", [("exported", 640.0, 160.0, 5, 9, None)]),
    ("team-b", "trt"): ("trtllm", [("exported", 900.0, 450.0, 2, 12, 0.3), ("both", 100.0, 50.0, 0, 1, 0.5)]),
}
TTFT_MAX = 2.0


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    exporters, targets = {}, []
    for (namespace, name), (engine, pods) in PODS.items():
        for spelling, tokens, prompt, queue, running, kv in pods:
            exporter = EngineExporter(engine, spelling=spelling, ttft_max_seconds=TTFT_MAX).start()
            exporter.set_load(tokens_per_second=tokens, prompt_tokens_per_second=prompt, queue_depth=queue,
                              running=running, kv_cache_usage=kv)
            exporters.setdefault((namespace, name), []).append(exporter)
            targets.append(ScrapeTarget(exporter.address, {"namespace": namespace, "tokenscale_io_service": name}))
    prometheus = PrometheusServer(tmp_path_factory.mktemp("prometheus"), scrape_interval=1.0)
    prometheus.set_targets(targets)
    with prometheus:
        _wait_for_full_windows(prometheus, len(targets))
        yield prometheus, exporters
    for pods in exporters.values():
        for exporter in pods:
            exporter.stop()


def _wait_for_full_windows(prometheus: PrometheusServer, targets: int) -> None:
    """Until every target has been scraped for longer than the long window."""
    config = PrometheusConfig(url=prometheus.url)
    source = PrometheusSource(config)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        rows = source._client.custom_query("count(count_over_time(up[6s]) >= 6)")
        if rows and int(float(rows[0]["value"][1])) >= targets:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"Prometheus did not scrape all {targets} targets: {prometheus._log_tail()}")
    time.sleep(1.0)
    source.close()


def _services(activation: dict | None = None) -> list[ServiceRef]:
    activation = activation or {}
    return [ServiceRef(ns, name, engine, activation.get((ns, name))) for (ns, name), (engine, _) in PODS.items()]


def _close(actual: float | None, expected: float, tolerance: float = 0.05) -> bool:
    return actual is not None and abs(actual - expected) <= tolerance * max(abs(expected), 1e-9)


def test_signals_per_service_match_the_fixture_rates(scraped):
    prometheus, _ = scraped
    source = PrometheusSource(PrometheusConfig(url=prometheus.url, windows=WINDOWS))
    signals = source.read(_services())
    assert set(signals) == set(PODS)
    for key, (engine, pods) in PODS.items():
        got = signals[key]
        tokens = sum(p[1] for p in pods)
        assert _close(got.tokens_per_second, tokens), (key, got)
        assert _close(got.tokens_per_second_long, tokens), (key, got)
        assert _close(got.prompt_tokens_per_second, sum(p[2] for p in pods)), (key, got)
        assert got.queue_depth == sum(p[3] for p in pods), (key, got)
        assert got.running_requests == sum(p[4] for p in pods), (key, got)
        assert got.ready_pods_reporting == len(pods), (key, got)
        assert _close(got.mean_output_tokens, 100.0), (key, got)  # the fixtures' 100 tokens a request
        assert got.sample_age_seconds is not None and 0 <= got.sample_age_seconds < 3, (key, got)
        if engine == "tgi":  # TGI exports neither KV use nor TTFT: missing, never zero
            assert got.kv_cache_usage is None and got.ttft_p90_seconds is None
        else:
            assert _close(got.kv_cache_usage, sum(p[5] for p in pods) / len(pods)), (key, got)
            assert _close(got.ttft_p90_seconds, 0.9 * TTFT_MAX), (key, got)
    source.close()


def test_one_query_per_signal_for_all_services(scraped):
    prometheus, _ = scraped
    source = PrometheusSource(PrometheusConfig(url=prometheus.url, windows=WINDOWS))
    expected = sum(
        len(signal_queries(metric_names(engine), WINDOWS, Grouping()))
        for engine in ("vllm", "sglang", "tgi", "trtllm")
    )
    before = prometheus.query_count()
    source.read(_services())
    assert prometheus.query_count() - before == expected == source.queries_sent
    # Fewer services of the same families: the same queries, not fewer or more.
    before = prometheus.query_count()
    source.read(_services()[::-1] + [ServiceRef("team-c", f"extra-{i}", "vllm") for i in range(50)])
    assert prometheus.query_count() - before == expected
    # Only vLLM-family services: only that family's queries.
    before = prometheus.query_count()
    source.read([s for s in _services() if s.engine in ("vllm", "builtin")])
    assert prometheus.query_count() - before == len(signal_queries(metric_names("vllm"), WINDOWS, Grouping()))
    source.close()


def test_services_without_series_read_as_missing_not_zero(scraped):
    prometheus, _ = scraped
    source = PrometheusSource(PrometheusConfig(url=prometheus.url, windows=WINDOWS))
    ghost = source.read([ServiceRef("team-a", "ghost", "vllm")])[("team-a", "ghost")]
    assert ghost.tokens_per_second is None and ghost.queue_depth is None and ghost.ready_pods_reporting is None
    assert ghost.core_missing() == ["tokens_per_second", "queue_depth"]
    source.close()


def test_activation_queries_run_per_service(scraped):
    prometheus, _ = scraped
    source = PrometheusSource(PrometheusConfig(url=prometheus.url, windows=WINDOWS))
    activation = {
        ("team-a", "llama"): 'sum(vllm:num_requests_waiting{tokenscale_io_service="llama"})',
        ("team-b", "sg"): "vector(0) * 7",
        ("team-b", "tg"): 'sum(no_such_gateway_metric{model="tg"})',  # empty: nothing waits
        ("team-b", "trt"): "sum(rate(",  # broken: that service reads None, the others still work
    }
    before = prometheus.query_count()
    signals = source.read(_services(activation))
    assert prometheus.query_count() - before == source.queries_sent  # 4 activation queries included
    assert signals[("team-a", "llama")].activation == 5.0
    assert signals[("team-b", "sg")].activation == 0.0
    assert signals[("team-b", "tg")].activation == 0.0
    assert signals[("team-b", "trt")].activation is None
    assert signals[("team-a", "qwen")].activation is None  # no query
    assert _close(signals[("team-b", "trt")].tokens_per_second, 1000.0)
    source.close()


def test_a_rate_change_shows_within_the_short_window(scraped):
    prometheus, exporters = scraped
    qwen = exporters[("team-a", "qwen")][0]
    qwen.set_load(tokens_per_second=480.0)
    try:
        time.sleep(5.5)  # the 4 s window plus a scrape
        source = PrometheusSource(PrometheusConfig(url=prometheus.url, windows=WINDOWS))
        assert _close(source.read(_services())[("team-a", "qwen")].tokens_per_second, 480.0)
        source.close()
    finally:
        qwen.set_load(tokens_per_second=120.0)


def test_unreachable_prometheus_raises_a_clear_error():
    source = PrometheusSource(PrometheusConfig(url=f"http://127.0.0.1:{free_port()}", timeout_seconds=2))
    started = time.monotonic()
    with pytest.raises(MetricsUnavailable, match="unreachable"):
        source.read(_services())
    assert time.monotonic() - started < 3
    source.close()


class _RecordingProxy(http.server.BaseHTTPRequestHandler):
    """Forwards to Prometheus and remembers the headers it was sent."""

    upstream = ""
    seen: list[dict] = []

    def do_GET(self):  # noqa: N802
        self.seen.append(dict(self.headers))
        with urllib.request.urlopen(self.upstream + self.path, timeout=5) as response:
            body = response.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_auth_and_extra_headers_reach_prometheus(scraped, tmp_path):
    prometheus, _ = scraped
    _RecordingProxy.upstream, _RecordingProxy.seen = prometheus.url, []
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("first-token\n")
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        config = PrometheusConfig(url=url, bearer_token_file=str(token), headers=(("X-Scope-OrgID", "team-a"),),
                                  windows=WINDOWS)
        source = PrometheusSource(config)
        signals = source.read([ServiceRef("team-a", "llama", "vllm")])
        assert _close(signals[("team-a", "llama")].tokens_per_second, 800.0)
        assert {h["Authorization"] for h in _RecordingProxy.seen} == {"Bearer first-token"}
        assert {h["X-Scope-OrgID"] for h in _RecordingProxy.seen} == {"team-a"}
        token.write_text("rotated-token\n")  # projected tokens rotate: read again each tick
        _RecordingProxy.seen = []
        source.read([ServiceRef("team-a", "llama", "vllm")])
        assert {h["Authorization"] for h in _RecordingProxy.seen} == {"Bearer rotated-token"}
        source.close()

        password = tmp_path / "password"
        password.write_text("s3cret")
        _RecordingProxy.seen = []
        basic = PrometheusSource(PrometheusConfig(url=url, username="reader", password_file=str(password)))
        basic.read([ServiceRef("team-a", "llama", "vllm")])
        assert {h["Authorization"] for h in _RecordingProxy.seen} == {"Basic cmVhZGVyOnMzY3JldA=="}
        basic.close()
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_with_a_ca_bundle_or_insecure(scraped, tmp_path):
    prometheus, _ = scraped
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    _RecordingProxy.upstream, _RecordingProxy.seen = prometheus.url, []
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    proxy.socket = context.wrap_socket(proxy.socket, server_side=True)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{proxy.server_address[1]}"
    service = [ServiceRef("team-a", "llama", "vllm")]
    try:
        trusted = PrometheusSource(PrometheusConfig(url=url, ca_file=str(cert), windows=WINDOWS))
        assert _close(trusted.read(service)[("team-a", "llama")].tokens_per_second, 800.0)
        insecure = PrometheusSource(PrometheusConfig(url=url, insecure=True, windows=WINDOWS))
        assert _close(insecure.read(service)[("team-a", "llama")].tokens_per_second, 800.0)
        untrusted = PrometheusSource(PrometheusConfig(url=url, timeout_seconds=3))
        with pytest.raises(MetricsUnavailable, match="SSLError"):
            untrusted.read(service)
        for source in (trusted, insecure, untrusted):
            source.close()
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_hanging_prometheus_times_out_within_the_configured_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        source = PrometheusSource(PrometheusConfig(url=url, timeout_seconds=1.0))
        started = time.monotonic()
        with pytest.raises(MetricsUnavailable, match="Timeout"):
            source.read(_services())
        assert time.monotonic() - started < 4  # queries run concurrently: one timeout, not 38
        source.close()
    finally:
        listener.close()
