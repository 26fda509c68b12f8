"""The memory-bounded task chunk used by ``"auto"`` on accelerators (models/batched/chunking.py)."""
from __future__ import annotations

import pytest
import torch

from mtlrepro.models import build_model
from mtlrepro.models.batched.chunking import (MEMORY_FRACTION, auto_chunk_for, memory_task_chunk,
                                              saved_bytes_per_task, task_chunks)


def _model(scheme: str = "max_roaming", n: int = 6):
    torch.manual_seed(0)
    return build_model("resnet18", scheme, [1] * n, width_mult=0.25)


@pytest.mark.parametrize("scheme", ["max_roaming", "etr_nlp"])
def test_probe_leaves_no_trace_and_scales_with_the_batch(scheme):
    m = _model(scheme).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(8, 3, 32, 32)
    a = saved_bytes_per_task(m, x[:4])
    b = saved_bytes_per_task(m, x)
    assert not m.training  # mode restored
    for k, v in m.state_dict().items():  # BN running statistics etc. untouched
        assert torch.equal(v, before[k]), k
    assert a > 0 and b == pytest.approx(2 * a, rel=0.05)
    # at least the activations a 32x32 ResNet18 (width 0.25) must keep: the stem's output alone
    assert a >= 4 * 16 * 16 * 16 * 4


def test_chunk_is_what_fits_in_the_free_memory_fraction():
    m = _model()
    x = torch.randn(4, 3, 32, 32)
    per_task = saved_bytes_per_task(m, x)
    assert memory_task_chunk(m, x, 6, free_bytes=int(3.5 * per_task / MEMORY_FRACTION)) == 3
    assert memory_task_chunk(m, x, 6, free_bytes=10 ** 15) == 6      # never more than the tasks
    assert memory_task_chunk(m, x, 6, free_bytes=0) == 1             # never less than one


def test_auto_chunk_only_for_auto_on_cuda(monkeypatch):
    m = _model()
    x = torch.randn(2, 3, 32, 32)
    monkeypatch.delenv("MTLREPRO_TASK_CHUNK", raising=False)
    assert auto_chunk_for(m, x) is None           # CPU: task_chunks' CPU default applies
    assert auto_chunk_for(m, x, 3) is None        # an explicit setting is kept
    assert task_chunks(6, device="cuda", auto_chunk=4) == [[0, 1, 2, 3], [4, 5]]
    assert task_chunks(6, device="cuda") == [list(range(6))]            # no estimate: all
    assert task_chunks(6, 2, device="cuda", auto_chunk=4) == [[0, 1], [2, 3], [4, 5]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_chunk_on_cuda_is_cached_and_bounded():
    m = _model().cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    c = auto_chunk_for(m, x)
    assert 1 <= c <= m.n_tasks
    assert m.__dict__["_memory_task_chunk"][(tuple(x.shape), x.dtype, str(x.device))] == c
