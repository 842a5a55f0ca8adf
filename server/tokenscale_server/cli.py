"""`tokenscale-server serve ...` and `tokenscale-server tiny-model DIR`."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading
import time

from .device import DEVICE_UNUSABLE_EXIT, TERMINATION_LOG, cuda_problem, describe, write_termination_message

log = logging.getLogger("tokenscale_server")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over the OpenAI API")
    p.add_argument("--model", required=True, help="a local model directory or a Hugging Face hub id")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of a hub id")
    p.add_argument("--served-model-name", nargs="+", action="extend", default=None, metavar="NAME",
                   help="name(s) clients use in `model`; the first is the metrics label (default: --model)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=None,
                   help="KV-cache slots = sequences decoded together (default: from free memory)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="prompt + output tokens per sequence (default: the model's context)")
    p.add_argument("--token-budget", type=int, default=None,
                   help="tokens per engine step, decodes plus prompt chunks (default: max(512, 2 x max-batch))")
    p.add_argument("--max-waiting", type=int, default=256,
                   help="waiting-queue bound; beyond it requests get 429 (default 256)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when usable, else CPU), cpu, cuda or cuda:N; cuda refuses to start "
                        "without a usable GPU rather than fall back to the CPU")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: the CPUs this process may use, within its cgroup quota)")
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` (default: $TOKENSCALE_API_KEY, else open)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for in-flight requests before exiting (default 30)")
    p.add_argument("--termination-log", default=TERMINATION_LOG, metavar="PATH",
                   help="where a fatal start-up error is also written for Kubernetes' "
                        f"lastState.terminated.message, if the file exists (default {TERMINATION_LOG})")
    p.add_argument("--log-level", default="info")


def _add_tiny(sub) -> None:
    p = sub.add_parser("tiny-model", help="build the seeded random tiny Llama used by tests and the demo")
    p.add_argument("directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenscale-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_tiny(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "tiny-model":
        from .tiny_model import build

        path = build(args.directory)
        print(f"tiny model ready in {path}")
        return 0
    return serve(args)


def default_threads() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's CPU
    limit). More OpenMP threads than that stall each other badly on a busy machine."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as cpu_max:
            quota, period = cpu_max.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def looks_local(model: str) -> bool:
    """A path, not a hub id (`org/name`): absolute, relative with ./ or ../, or ~."""
    return model.startswith(("/", "./", "../", "~")) or os.path.isdir(model)


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if looks_local(args.model) and not os.path.isfile(os.path.join(os.path.expanduser(args.model), "config.json")):
        # Fail before the slow imports: a missing volume should crash-loop fast and say why.
        return fatal(args, f"no model at {args.model} (expected a directory with config.json)", 2)
    import torch

    if args.device.startswith("cuda"):
        problem = cuda_problem(args.device)
        if problem is not None:
            return fatal(args, describe(problem), DEVICE_UNUSABLE_EXIT)
    elif args.device == "auto" and os.path.exists("/dev/nvidiactl"):
        problem = cuda_problem("cuda")
        if problem is not None:  # allowed with auto, but never silent
            log.warning("an NVIDIA device is present but --device auto runs on the CPU: %s", describe(problem))

    torch.set_num_threads(args.threads or default_threads())
    # The engine thread and the event loop share the GIL; Python's default 5 ms switch interval
    # would let the HTTP side hold up a decoding step of a few milliseconds.
    sys.setswitchinterval(0.0005)
    import uvicorn
    from transformers.utils import logging as hf_logging

    from .api import ServerSettings, create_app

    hf_logging.disable_progress_bar()
    settings = ServerSettings(
        model=args.model,
        served_model_names=args.served_model_name or [args.model],
        revision=args.revision,
        device=args.device, dtype=args.dtype, max_batch=args.max_batch, max_model_len=args.max_model_len,
        token_budget=args.token_budget, max_waiting=args.max_waiting,
        api_key=args.api_key or os.environ.get("TOKENSCALE_API_KEY") or None,
        drain_timeout_s=args.drain_timeout,
    )
    app = create_app(settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                            access_log=False, timeout_graceful_shutdown=5)
    server = DrainingServer(config, app.state.server)
    app.state.server.on_fatal = server.fail
    server.run()
    return server.exit_code


def fatal(args: argparse.Namespace, message: str, exit_code: int) -> int:
    """Log a start-up failure and leave it where Kubernetes shows it; returns the exit code."""
    log.error("%s", message)
    write_termination_message(message, args.termination_log)
    return exit_code


class DrainingServer:
    """uvicorn with Kubernetes-style shutdown: the first SIGTERM turns /ready false and refuses new
    work (503) while in-flight requests finish, then the process exits 0; a second signal exits now."""

    def __init__(self, config, state):
        import uvicorn

        outer = self

        class _Server(uvicorn.Server):
            def handle_exit(self, sig, frame):  # replaces uvicorn's: no re-raise, exit code 0
                outer._on_signal(sig)

        self.server = _Server(config)
        self.state = state
        self.exit_code = 0

    def run(self) -> None:
        self.server.run()

    def fail(self, reason: str) -> None:
        self.exit_code = 1
        self.server.should_exit = True

    def _on_signal(self, sig: int) -> None:
        if self.state.draining:
            log.warning("second signal: exiting without waiting for %d requests", self.state.in_flight)
            self.server.should_exit = True
            self.server.force_exit = True
            return
        log.info("signal %d: draining %d in-flight requests (at most %.0f s)", sig, self.state.in_flight,
                 self.state.settings.drain_timeout_s)
        self.state.draining = True
        threading.Thread(target=self._drain, name="drain", daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.state.settings.drain_timeout_s
        while self.state.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.state.in_flight:
            log.warning("drain timeout: %d requests still in flight", self.state.in_flight)
        self.server.should_exit = True


if __name__ == "__main__":
    sys.exit(main())
