"""Fixtures for the batching server's tests: the tiny model is built once for the package, and real
`tokenscale-server serve` processes are started on free loopback ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.serverkit import API_KEY, start_server


@pytest.fixture(scope="package")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tokenscale_server.tiny_model import build

    return build(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="package")
def tiny_loaded(tiny_model_dir):
    """The tiny model loaded in-process through the server's own loading path."""
    import torch

    from tokenscale_server.model_runner import load_model

    torch.set_num_threads(1)
    return load_model(str(tiny_model_dir), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="package")
def shared_server(tiny_model_dir, tmp_path_factory):
    """One server for the API tests: 4 slots, a waiting queue of 4, an API key."""
    server = start_server(tiny_model_dir, tmp_path_factory.mktemp("logs"), "--max-batch", "4",
                          "--max-waiting", "4", "--max-model-len", "512", "--api-key", API_KEY)
    yield server
    server.stop()
