"""A real Prometheus (the distribution's binary) as a child process on 127.0.0.1.

Used by the integration tests, the benchmark and the local closed loop:

    with PrometheusServer(workdir, scrape_interval=1.0) as prom:
        prom.set_targets([ScrapeTarget("127.0.0.1:8001", {"namespace": "ns", "tokenscale_io_service": "a"})])
        ...  # query prom.url
        prom.stop(); prom.start()   # an outage and a recovery, same port and data

Targets come through file_sd (re-read every second, written atomically). Prometheus applies
target changes at most every 5 s, so set the first targets before `start()` where you can.
`backfill()` turns OpenMetrics text into TSDB blocks with promtool, for exact answers at a
fixed query time without waiting for scrapes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class PrometheusNotInstalled(RuntimeError):
    pass


def prometheus_binaries() -> tuple[str, str] | None:
    """Paths of `prometheus` and `promtool`, or None when either is missing."""
    server, tool = shutil.which("prometheus"), shutil.which("promtool")
    return (server, tool) if server and tool else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class ScrapeTarget:
    address: str  # host:port serving /metrics
    labels: dict[str, str] = field(default_factory=dict)  # attached to every series of the target


def _config(scrape_interval: float, targets_file: Path, metrics_path: str) -> str:
    interval = f"{int(scrape_interval * 1000)}ms"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "tokenscale",
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "metrics_path": metrics_path,
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
            }
        ],
    }
    return json.dumps(config, indent=2)  # JSON is YAML


class PrometheusServer:
    """Debian's prometheus on a free 127.0.0.1 port, scraping the targets of `set_targets`.

    `storage` may be a TSDB filled by `backfill()`; `retention` then keeps old blocks.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        scrape_interval: float = 1.0,
        port: int | None = None,
        storage: Path | None = None,
        metrics_path: str = "/metrics",
        retention: str = "100y",
    ):
        binaries = prometheus_binaries()
        if binaries is None:
            raise PrometheusNotInstalled("prometheus/promtool not found (Debian: apt-get install prometheus)")
        self.binary = binaries[0]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.storage = Path(storage) if storage else self.workdir / "data"
        self.retention = retention
        self.targets_file = self.workdir / "targets.json"
        self.config_file = self.workdir / "prometheus.yml"
        self.log_file = self.workdir / "prometheus.log"
        self.config_file.write_text(_config(scrape_interval, self.targets_file, metrics_path))
        if not self.targets_file.exists():
            self.set_targets([])
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen | None:
        """The running child, for a supervisor that stops every process at exit."""
        return self._process

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def set_targets(self, targets: list[ScrapeTarget]) -> None:
        """Replace the scrape targets (atomic write: Prometheus never reads half a file)."""
        groups = [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]
        temporary = self.targets_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(groups))
        os.replace(temporary, self.targets_file)

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        """Start (or restart on the same port and data) and wait for /-/ready."""
        if self.running:
            return self
        command = [
            self.binary,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.storage}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._process.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"prometheus not ready after {timeout} s: {self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it will not go: the data directory stays for a restart."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def query_count(self) -> int:
        """Instant queries this server has answered (its own prometheus_http_requests_total)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0
        for line in text.splitlines():
            if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text()[-2000:]
        except OSError:
            return ""

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def backfill(openmetrics: str | Path, storage: Path, workdir: Path | None = None) -> None:
    """Write OpenMetrics text (ending in `# EOF`) into TSDB blocks under `storage` (promtool)."""
    binaries = prometheus_binaries()
    if binaries is None:
        raise PrometheusNotInstalled("promtool not found (Debian: apt-get install prometheus)")
    storage = Path(storage)
    storage.mkdir(parents=True, exist_ok=True)
    source = Path(openmetrics) if isinstance(openmetrics, Path) else None
    if source is None:
        source = Path(workdir or storage.parent) / "backfill.om"
        source.write_text(openmetrics)
    result = subprocess.run(
        [binaries[1], "tsdb", "create-blocks-from", "openmetrics", str(source), str(storage)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"promtool backfill failed: {result.stderr[-2000:]}")
