"""Benchmarks record the machine with every result (torch, CUDA, GPU)."""
from __future__ import annotations

import os

import pytest
import torch


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["cuda"] = torch.version.cuda
    machine_info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine_info["torch_threads"] = torch.get_num_threads()


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(os.environ.get("MTLREPRO_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))


@pytest.fixture(scope="session")
def bench_batch() -> int:
    return int(os.environ.get("MTLREPRO_BENCH_BATCH", "32"))


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread for a whole module (restored afterwards), so CPU timings do not depend on
    how busy the other cores are; on a GPU it only affects the host side."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
