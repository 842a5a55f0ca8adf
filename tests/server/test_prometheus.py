"""A real Prometheus 2.x (Debian's binary, as a child process) scrapes the server every second and
stores its series under the `vllm:` names the operator queries."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from tests.server.serverkit import API_KEY, SERVED_NAME, free_port, scrape, wait_for

pytestmark = pytest.mark.prometheus

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def prometheus(shared_server, tmp_path):
    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus binary is not installed (make setup installs it)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: tokenscale-server\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{shared_server.port}']}}]\n")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{url}/-/ready"), timeout=20, interval=0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _get(url):
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def query(url: str, promql: str) -> list[dict]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_stores_the_vllm_names(shared_server, prometheus):
    tokens = 0
    for index in range(3):
        reply = httpx.post(f"{shared_server.url}/v1/completions", timeout=30,
                           headers={"Authorization": f"Bearer {API_KEY}"},
                           json={"model": SERVED_NAME, "prompt": f"scrape me {index}", "max_tokens": 7,
                                 "ignore_eos": True})
        tokens += reply.json()["usage"]["completion_tokens"]
    expected = scrape(shared_server.url)["vllm:generation_tokens_total"]
    assert tokens == 21 and expected >= tokens

    def stored():
        result = query(prometheus, "vllm:generation_tokens_total")
        return result if result and float(result[0]["value"][1]) == expected else None

    series = wait_for(stored, timeout=20, interval=0.25)
    assert series[0]["metric"]["__name__"] == "vllm:generation_tokens_total"
    assert series[0]["metric"]["model_name"] == SERVED_NAME
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket"):
        assert query(prometheus, name), f"{name} not stored"
    success = query(prometheus, 'sum(vllm:request_success_total{finished_reason="length"})')
    assert float(success[0]["value"][1]) >= 3
    # The underscored spelling (what OpenMetrics escaping would have produced) is absent.
    time.sleep(1.1)
    assert query(prometheus, '{__name__=~"vllm_.+"}') == []
    assert query(prometheus, "histogram_quantile(0.99, sum by (le) (vllm:time_to_first_token_seconds_bucket))")
