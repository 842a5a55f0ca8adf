"""tokenscale: throughput-based autoscaling of GPU LLM inference on Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokenscale")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
