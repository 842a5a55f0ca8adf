"""Why CUDA cannot be used, in words a cluster operator can act on.

A GPU replica that quietly runs on the CPU is a GPU-billed pod serving at CPU speed, so
`serve --device cuda` refuses to start when CUDA is unusable and says why: torch's own error,
the CUDA version torch was built for, and the node's NVIDIA driver. The message also goes to the
container's termination-message file, where Kubernetes shows it in
`lastState.terminated.message` and the operator reports it on the InferenceService.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

# Exit status of `serve` when the requested device is unusable (2: no model at --model).
DEVICE_UNUSABLE_EXIT = 3
TERMINATION_LOG = "/dev/termination-log"  # the kubelet's default terminationMessagePath
NVIDIA_PROC_VERSION = "/proc/driver/nvidia/version"

# The oldest Linux driver of each CUDA release the image is built for (NVIDIA's release notes).
MIN_DRIVER = {"13.0": "580.65.06", "12.8": "570.26"}


@dataclass(frozen=True)
class CudaProblem:
    requested: str  # the --device value, e.g. "cuda" or "cuda:1"
    cause: str  # torch's own words
    torch_version: str
    torch_cuda: str | None  # torch.version.cuda; None for a CPU build
    driver: str | None  # the NVIDIA driver version, when one is found


def describe(problem: CudaProblem) -> str:
    """One line for the log, the exit and `kubectl describe`."""
    built_for = problem.torch_cuda or "None (a CPU build of torch)"
    driver = problem.driver or f"none found (no {NVIDIA_PROC_VERSION}, no nvidia-smi)"
    if problem.torch_cuda is None:
        hint = "Use a CUDA build of the image (TORCH_FLAVOUR cu130 or cu128)."
    elif problem.torch_cuda in MIN_DRIVER:
        hint = (f"CUDA {problem.torch_cuda} needs NVIDIA driver >= {MIN_DRIVER[problem.torch_cuda]}: "
                "schedule on a node with such a driver or use an image of an older CUDA flavour.")
    else:
        hint = f"The node's driver must support CUDA {problem.torch_cuda}."
    return (f"--device {problem.requested} asked, but CUDA is not usable: {problem.cause.rstrip('.')}. "
            f"torch {problem.torch_version} was built for CUDA {built_for}; NVIDIA driver: {driver}. "
            f"{hint} Not falling back to the CPU.")


def nvidia_driver_version(proc_path: str = NVIDIA_PROC_VERSION) -> str | None:
    """The kernel module's version from /proc, else nvidia-smi's answer, else None."""
    try:
        with open(proc_path) as version_file:
            match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", version_file.read())
        if match:
            return match.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        answer = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = answer.stdout.split()
    return lines[0] if answer.returncode == 0 and lines else None


def cuda_problem(requested: str) -> CudaProblem | None:
    """None when `requested` (cuda or cuda:N) can be used; else what stands in the way."""
    import torch

    try:
        index = torch.device(requested).index or 0
        torch.cuda.init()  # raises with torch's reason: no driver, driver too old, CPU build
        count = torch.cuda.device_count()
        cause = None if index < count else f"device index {index} asked, {count} CUDA device(s) visible"
    except (AssertionError, RuntimeError) as exc:
        cause = " ".join(str(exc).split()) or type(exc).__name__
    if cause is None:
        return None
    return CudaProblem(requested=requested, cause=cause, torch_version=torch.__version__,
                       torch_cuda=torch.version.cuda, driver=nvidia_driver_version())


def write_termination_message(message: str, path: str = TERMINATION_LOG) -> bool:
    """Write where the kubelet reads it. The kubelet creates the file in every container; where
    it does not exist (a developer's machine) or cannot be written, nothing is written."""
    try:
        with open(path, "r+") as termination_log:  # r+: never create a file in /dev
            termination_log.truncate()
            termination_log.write(message[:4096])  # the kubelet keeps at most 4096 bytes
        return True
    except OSError:
        return False
