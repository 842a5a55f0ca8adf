"""Engine adapters: each engine's real command line, ports, probes, env, GPUs and volumes."""

from __future__ import annotations

from typing import Any

import pytest

from tokenscale.api import EngineType, parse_spec
from tokenscale.engines import ADAPTERS, adapter_for
from tokenscale.engines.base import CACHE_VOLUME, MODEL_CACHE_PATH, SHM_VOLUME

BASE: dict[str, Any] = {"model": {"source": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama-8b"}}


def spec_for(engine_type: str, **overrides: Any) -> Any:
    engine = {"type": engine_type, **overrides.pop("engine", {})}
    return parse_spec({**BASE, **overrides, "engine": engine})


def value_after(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def test_every_engine_type_has_an_adapter():
    assert set(ADAPTERS) == set(EngineType)
    for engine in EngineType:
        assert adapter_for(engine.value).engine == engine.value


@pytest.mark.parametrize(
    ("engine", "image_prefix", "batch_flag", "length_flag", "parallel_flag"),
    [
        ("vllm", "vllm/vllm-openai:", "--max-num-seqs", "--max-model-len", "--tensor-parallel-size"),
        ("sglang", "lmsysorg/sglang:", "--max-running-requests", "--context-length", "--tp"),
        ("tgi", "ghcr.io/huggingface/text-generation-inference:", "--max-concurrent-requests",
         "--max-total-tokens", "--num-shard"),
        ("trtllm", "nvcr.io/nvidia/tensorrt-llm/release:", "--max_batch_size", "--max_seq_len", "--tp_size"),
    ],
)
def test_release_engines_get_their_own_flags(engine, image_prefix, batch_flag, length_flag, parallel_flag):
    spec = spec_for(engine, engine={"maxBatchSize": 96, "maxModelLen": 8192}, resources={"gpus": 4})
    container = adapter_for(engine).container(spec)
    assert container["image"].startswith(image_prefix)
    args = container["args"]
    assert value_after(args, batch_flag) == "96"
    assert value_after(args, length_flag) == "8192"
    assert value_after(args, parallel_flag) == "4"  # tensor parallelism = GPUs per replica
    assert value_after(args, "--port") == "8000"
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_model_source_and_served_name_reach_each_engine():
    vllm = adapter_for("vllm").container(spec_for("vllm"))["args"]
    assert value_after(vllm, "--model") == "meta-llama/Llama-3.1-8B-Instruct"
    assert value_after(vllm, "--served-model-name") == "llama-8b"
    sglang = adapter_for("sglang").container(spec_for("sglang"))
    assert sglang["command"] == ["python3", "-m", "sglang.launch_server"]
    assert value_after(sglang["args"], "--model-path") == "meta-llama/Llama-3.1-8B-Instruct"
    assert "--enable-metrics" in sglang["args"]  # SGLang exports nothing without it
    tgi = adapter_for("tgi").container(spec_for("tgi"))["args"]
    assert value_after(tgi, "--model-id") == "meta-llama/Llama-3.1-8B-Instruct"
    trtllm = adapter_for("trtllm").container(spec_for("trtllm"))
    assert trtllm["command"] == ["trtllm-serve"]
    assert trtllm["args"][0] == "meta-llama/Llama-3.1-8B-Instruct"


def test_builtin_runs_tokenscale_server_with_the_operator_image():
    spec = spec_for("builtin", engine={"maxBatchSize": 32, "maxModelLen": 2048}, resources={"gpus": 0})
    adapter = adapter_for("builtin")
    container = adapter.container(spec, default_image="ghcr.io/tokenscale/server:9.9.9")
    assert container["image"] == "ghcr.io/tokenscale/server:9.9.9"
    assert container["command"] == ["tokenscale-server", "serve"]
    args = container["args"]
    assert value_after(args, "--model") == "meta-llama/Llama-3.1-8B-Instruct"
    assert value_after(args, "--max-batch") == "32"
    assert value_after(args, "--max-model-len") == "2048"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "resources" not in container or "limits" not in container["resources"]  # gpus: 0 is CPU
    # It drains on SIGTERM within the grace period the pod gives it.
    drain = float(value_after(args, "--drain-timeout"))
    assert 0 < drain < adapter.termination_grace_seconds(spec) - adapter.drain_seconds


def test_image_override_and_extra_args_win():
    spec = spec_for("vllm", engine={"image": "my.registry/vllm:custom", "args": ["--enforce-eager", "--seed", "1"]})
    container = adapter_for("vllm").container(spec)
    assert container["image"] == "my.registry/vllm:custom"
    assert container["args"][-3:] == ["--enforce-eager", "--seed", "1"]


def test_optional_flags_are_left_out_when_unset():
    args = adapter_for("vllm").container(spec_for("vllm"))["args"]
    assert "--max-model-len" not in args and "--revision" not in args
    args = adapter_for("vllm").container(spec_for("vllm", model={**BASE["model"], "revision": "abc123"}))["args"]
    assert value_after(args, "--revision") == "abc123"


def test_probes_are_generous_at_startup_and_hit_real_health_endpoints():
    for engine, adapter in ADAPTERS.items():
        container = adapter.container(spec_for(engine.value, resources={"gpus": 1}))
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # model loading takes minutes
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == "http"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0


def test_gpu_resource_name_cpu_and_memory():
    spec = spec_for("vllm", resources={"gpus": 2, "gpuResourceName": "amd.com/gpu", "cpu": "8", "memory": "64Gi"})
    resources = adapter_for("vllm").container(spec)["resources"]
    assert resources["limits"] == {"amd.com/gpu": "2", "cpu": "8", "memory": "64Gi"}
    assert resources["requests"] == resources["limits"]


def test_env_has_the_hugging_face_token_from_the_secret_and_user_variables_win():
    spec = spec_for("tgi", secrets={"huggingFaceToken": {"name": "hf-secret", "key": "token"}},
                    engine={"env": [{"name": "HF_HOME", "value": "/elsewhere"}, {"name": "A", "value": "1"}]})
    env = adapter_for("tgi").container(spec)["env"]
    by_name = {item["name"]: item for item in env}
    assert by_name["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-secret", "key": "token"}}
    assert by_name["HUGGING_FACE_HUB_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-secret"
    assert by_name["HF_HOME"]["value"] == "/elsewhere"
    assert by_name["A"]["value"] == "1"
    assert len(env) == len(by_name)  # one entry per name


def test_volumes_shared_memory_and_model_cache():
    adapter = adapter_for("vllm")
    spec = spec_for("vllm", resources={"sharedMemory": "8Gi"}, modelCache={"persistentVolumeClaim": "models"})
    volumes = {v["name"]: v for v in adapter.volumes(spec)}
    assert volumes[SHM_VOLUME]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert volumes[CACHE_VOLUME]["persistentVolumeClaim"] == {"claimName": "models"}
    mounts = {m["name"]: m["mountPath"] for m in adapter.container(spec)["volumeMounts"]}
    assert mounts[SHM_VOLUME] == "/dev/shm" and mounts[CACHE_VOLUME] == MODEL_CACHE_PATH
    empty = {v["name"]: v for v in adapter.volumes(spec_for("vllm", modelCache={"sizeLimit": "100Gi"}))}
    assert empty[CACHE_VOLUME]["emptyDir"] == {"sizeLimit": "100Gi"}


def test_security_context_is_hardened_where_the_image_allows():
    for engine, adapter in ADAPTERS.items():
        context = adapter.container(spec_for(engine.value, resources={"gpus": 1}))["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert adapter_for("builtin").security_context()["readOnlyRootFilesystem"] is True
    for engine in ("builtin", "vllm"):
        assert adapter_for(engine).pod_security_context()["runAsNonRoot"] is True
    # Images that expect root (writable paths inside the image) are not forced to a uid.
    for engine in ("sglang", "tgi", "trtllm"):
        assert "runAsNonRoot" not in adapter_for(engine).security_context()


def test_metrics_endpoint_and_metric_names():
    assert adapter_for("trtllm").metrics().path == "/prometheus/metrics"
    for engine in ("builtin", "vllm", "sglang", "tgi"):
        endpoint = adapter_for(engine).metrics()
        assert (endpoint.port, endpoint.path, endpoint.port_name) == (8000, "/metrics", "http")
    assert "vllm:num_requests_waiting" in adapter_for("builtin").metric_names.queue_depth
    assert adapter_for("sglang").metric_names.family == "sglang"


def test_builtin_image_defaults_to_this_release():
    from tokenscale import __version__

    container = adapter_for("builtin").container(spec_for("builtin", resources={"gpus": 0}))
    assert container["image"] == f"ghcr.io/tokenscale/server:{__version__}"


def test_builtin_runs_as_the_server_images_own_user():
    """The pod's runAsUser is the USER of server/Dockerfile, so the image's own paths are its own."""
    from pathlib import Path

    dockerfile = (Path(__file__).resolve().parents[2] / "server" / "Dockerfile").read_text()
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")][-1]
    adapter = ADAPTERS[EngineType.builtin]
    assert user == f"{adapter.non_root_uid}:{adapter.non_root_uid}"


def test_a_pinned_revision_reaches_the_builtin_server_and_its_command_line_accepts_it():
    from tokenscale_server.cli import build_parser

    spec = spec_for("builtin", model={"source": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "v1.0"})
    container = adapter_for("builtin").container(spec)
    assert value_after(container["args"], "--revision") == "v1.0"
    parsed = build_parser().parse_args([*container["command"][1:], *container["args"]])
    assert parsed.revision == "v1.0" and parsed.model == "Qwen/Qwen2.5-0.5B-Instruct"
