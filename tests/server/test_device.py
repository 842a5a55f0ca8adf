"""`--device cuda` without usable CUDA: the server refuses to start and says why, where Kubernetes
shows it, instead of serving a GPU replica from the CPU."""

from __future__ import annotations

import subprocess
import sys

import torch

from tokenscale_server.device import (
    DEVICE_UNUSABLE_EXIT,
    CudaProblem,
    describe,
    nvidia_driver_version,
    write_termination_message,
)


def serve_on_cuda(model_dir, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tokenscale_server.cli", "serve", "--model", str(model_dir), "--device", "cuda",
         "--host", "127.0.0.1", "--port", "0", "--threads", "1", *extra],
        capture_output=True, text=True, timeout=120)


def test_cuda_asked_on_a_machine_without_it_exits_with_the_reason(tiny_model_dir, tmp_path):
    assert not torch.cuda.is_available(), "this test stands for a GPU node whose CUDA is unusable"
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")  # the kubelet creates the file; the server only writes it
    result = serve_on_cuda(tiny_model_dir, "--termination-log", str(termination_log))
    assert result.returncode == DEVICE_UNUSABLE_EXIT == 3
    message = termination_log.read_text()
    assert message in result.stderr  # the same words in the log and in lastState.terminated.message
    assert message.startswith("--device cuda asked, but CUDA is not usable: ")
    assert f"torch {torch.__version__} was built for CUDA " in message
    built_for = torch.version.cuda or "None (a CPU build of torch)"
    assert f"was built for CUDA {built_for};" in message
    assert "NVIDIA driver: " in message and "Not falling back to the CPU." in message
    assert "Uvicorn running" not in result.stderr  # it never served


def test_no_termination_file_is_created_where_the_kubelet_made_none(tiny_model_dir, tmp_path):
    absent = tmp_path / "absent" / "termination-log"
    result = serve_on_cuda(tiny_model_dir, "--termination-log", str(absent))
    assert result.returncode == DEVICE_UNUSABLE_EXIT
    assert not absent.exists() and not absent.parent.exists()


def problem(**overrides) -> CudaProblem:
    fields = {"requested": "cuda", "cause": "The NVIDIA driver on your system is too old (found version 12080).",
              "torch_version": "2.13.0+cu130", "torch_cuda": "13.0", "driver": "570.124.06"}
    return CudaProblem(**{**fields, **overrides})


def test_the_message_names_the_driver_and_the_cuda_torch_was_built_for():
    assert describe(problem()) == (
        "--device cuda asked, but CUDA is not usable: The NVIDIA driver on your system is too old "
        "(found version 12080). torch 2.13.0+cu130 was built for CUDA 13.0; NVIDIA driver: 570.124.06. "
        "CUDA 13.0 needs NVIDIA driver >= 580.65.06: schedule on a node with such a driver or use an "
        "image of an older CUDA flavour. Not falling back to the CPU.")


def test_the_message_for_a_cpu_build_and_no_driver():
    text = describe(problem(requested="cuda:1", cause="Torch not compiled with CUDA enabled",
                            torch_version="2.13.0+cpu", torch_cuda=None, driver=None))
    assert text.startswith("--device cuda:1 asked, but CUDA is not usable: Torch not compiled with CUDA enabled. ")
    assert "torch 2.13.0+cpu was built for CUDA None (a CPU build of torch);" in text
    assert "NVIDIA driver: none found (no /proc/driver/nvidia/version, no nvidia-smi)." in text
    assert "Use a CUDA build of the image (TORCH_FLAVOUR cu130 or cu128)." in text


def test_a_cuda_version_without_a_known_driver_floor_still_gets_a_hint():
    assert "The node's driver must support CUDA 12.6." in describe(problem(torch_cuda="12.6"))


def test_the_driver_version_is_read_from_the_kernel_module(tmp_path):
    proprietary = tmp_path / "proprietary"
    proprietary.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.124.06  Wed Feb 26 2025\n"
                           "GCC version:  gcc version 12.2.0\n")
    open_module = tmp_path / "open"
    open_module.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n")
    assert nvidia_driver_version(str(proprietary)) == "570.124.06"
    assert nvidia_driver_version(str(open_module)) == "580.65.06"


def test_the_termination_message_is_written_only_into_an_existing_file(tmp_path):
    existing = tmp_path / "termination-log"
    existing.write_text("an older, longer message")
    assert write_termination_message("why", str(existing))
    assert existing.read_text() == "why"
    assert not write_termination_message("why", str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()
    assert write_termination_message("x" * 5000, str(existing))
    assert len(existing.read_text()) == 4096  # what the kubelet keeps


def test_a_missing_model_is_reported_in_the_termination_message_too(tmp_path):
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")
    missing = tmp_path / "no-model-here"
    result = subprocess.run(
        [sys.executable, "-m", "tokenscale_server.cli", "serve", "--model", str(missing),
         "--termination-log", str(termination_log)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert termination_log.read_text() == f"no model at {missing} (expected a directory with config.json)"
