"""A builtin replica given GPUs runs on one or says why it cannot, never silently on the CPU."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tokenscale import desired
from tokenscale.api import parse_spec
from tokenscale_server.cli import build_parser


def serving_container(gpus: int, extra_args: list[str] | None = None) -> dict:
    spec = parse_spec({"model": {"source": "Qwen/Qwen2.5-0.5B-Instruct"},
                       "engine": {"type": "builtin", "args": extra_args or []},
                       "resources": {"gpus": gpus}})
    deployment = desired.deployment("qwen", "serving", spec, replicas=1)
    kubernetes_validate.validate(deployment, "1.33", strict=True)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def server_args(container: dict) -> object:
    """The container's command line as the server's own parser reads it."""
    assert container["command"] == ["tokenscale-server", "serve"]
    return build_parser().parse_args(["serve", *container["args"]])


@pytest.mark.parametrize("gpus", [1, 4])
def test_a_gpu_replica_asks_the_server_for_cuda(gpus):
    assert server_args(serving_container(gpus)).device == "cuda"


def test_a_replica_without_gpus_runs_on_the_cpu():
    assert server_args(serving_container(0)).device == "cpu"


def test_the_users_engine_args_still_choose_the_device():
    assert server_args(serving_container(1, ["--device", "cuda:1"])).device == "cuda:1"


def test_a_failed_start_shows_its_message_or_the_logs_tail():
    # The server writes why it exits to the termination-message file; other engines' crashes
    # still show their last log lines in lastState.terminated.message.
    assert serving_container(1)["terminationMessagePolicy"] == "FallbackToLogsOnError"
