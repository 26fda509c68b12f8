"""Seeded draws of the models are fixed functions of their seeds, the same with any numpy and on any
CPU: routing masks and roaming choices (SeedSequence-keyed, no numpy ``Generator`` method) and the
fixed Gaussian primitives (float64 draws, not the CPU-capability-dependent float32 kernel)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlrepro.models import build_model
from mtlrepro.models.primitives import seeded_index, seeded_keys, seeded_subset
from mtlrepro.models.sharing.task_routing import init_routing_mask, n_active_units

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_numpy_generator(monkeypatch):
    """Any use of a numpy Generator (whose methods' algorithms numpy may change) fails."""
    def refuse(*args, **kwargs):
        raise AssertionError("a numpy Generator was used for a seeded draw")
    monkeypatch.setattr(np.random, "default_rng", refuse)
    monkeypatch.setattr(np.random, "Generator", refuse)


# --------------------------------------------------------------------------- keyed draws
def test_seeded_keys_are_seedsequence_words():
    """The keys are SeedSequence's published hash output, nothing else (hand-built here)."""
    words = [7, 0, 3, 1]  # each part as two 32-bit words, low first: 7 -> (7, 0), 2**32 + 3 -> (3, 1)
    want = np.random.SeedSequence(words).generate_state(5, np.uint64)
    assert np.array_equal(seeded_keys(5, 7, 2**32 + 3), want)
    assert not np.array_equal(seeded_keys(5, 7, 3), want)


def test_seeded_subset_is_the_k_smallest_keys():
    keys = seeded_keys(6, 11, 2)
    pool = np.array([10, 20, 30, 40, 50, 60])
    got = seeded_subset(pool, 3, 11, 2)
    assert got.tolist() == [pool[i] for i in sorted(range(6), key=lambda i: keys[i])[:3]]
    assert seeded_subset(pool, 0, 1).size == 0 and sorted(seeded_subset(pool, 6, 1)) == pool.tolist()
    with pytest.raises(ValueError):
        seeded_subset(pool, 7, 1)
    with pytest.raises(ValueError):
        seeded_index(0, 1)


def test_seeded_subset_and_index_are_uniform():
    """Every element of a 12-pool is in a keyed 8-subset with probability 8/12, and every index of
    range(5) is drawn with probability 1/5 (2000 seeds: 5 sigma is 0.05 and 0.045)."""
    n = 2000
    counts = np.zeros(12)
    for s in range(n):
        sub = seeded_subset(np.arange(12), 8, s)
        assert len(set(sub.tolist())) == 8
        counts[sub] += 1
    np.testing.assert_allclose(counts / n, 8 / 12, atol=0.05)
    idx = np.bincount([seeded_index(5, s, 9) for s in range(n)], minlength=5)
    np.testing.assert_allclose(idx / n, 0.2, atol=0.045)


# --------------------------------------------------------------------------- routing masks
@pytest.mark.parametrize("n_tasks,n_units,sigma", [(8, 64, 0.9), (40, 64, 0.9), (4, 16, 0.5), (3, 10, 1.0)])
def test_routing_mask_without_numpy_generator(no_numpy_generator, n_tasks, n_units, sigma):
    mask = init_routing_mask(n_tasks, n_units, sigma, seed=5)
    assert mask.shape == (n_tasks, n_units) and set(np.unique(mask)) <= {0.0, 1.0}
    assert mask.any(axis=0).all()                          # every unit used by some task
    for k in range(n_tasks):                               # covering units k, k+T, ... kept
        covering = range(k, n_units, n_tasks)
        assert mask[k, list(covering)].all()
        assert mask[k].sum() == max(n_active_units(n_units, sigma), len(covering))
    assert np.array_equal(mask, init_routing_mask(n_tasks, n_units, sigma, seed=5))
    if sigma < 1:
        assert not np.array_equal(mask, init_routing_mask(n_tasks, n_units, sigma, seed=6))


def test_max_roaming_roams_without_numpy_generator(no_numpy_generator):
    torch.manual_seed(0)
    m = build_model("resnet18", "max_roaming", [1, 2, 1], width_mult=0.25)
    before = m.masks()
    assert m.roam() > 0
    after = m.masks()
    for p, q in zip(before, after):
        assert torch.equal(p.sum(1), q.sum(1))            # same number of active units per task
        assert ((p != q).sum(1) <= 2).all()                # one unit in, one unit out per task


# --------------------------------------------------------------------------- across CPU kernels
_GAUSSIAN_DRAWS = """
import hashlib, torch
from mtlrepro.models.primitives import FixedConv, Perturb
noise = Perturb(16, level=0.3, distribution="gaussian", seed=4).make_noise(9, 9)
conv = FixedConv(16, binary=False, expansion=2, seed=4).weight
print(hashlib.sha256(noise.numpy().tobytes() + conv.numpy().tobytes()).hexdigest())
"""


def _cpu_has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _cpu_has_avx2(), reason="needs a CPU with AVX2 to compare two CPU kernels")
def test_gaussian_primitives_same_under_every_cpu_capability():
    """float32 ``torch.randn`` takes a vectorised kernel under avx2/avx512 and a scalar one under
    ``default``; the primitives' fixed Gaussian draws must not depend on which."""
    digests = set()
    for cap in ("default", "avx2"):
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, "-c", _GAUSSIAN_DRAWS], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=300, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


def test_gaussian_primitive_draws_are_standard_normal_float32():
    from mtlrepro.models.primitives import Perturb
    noise = Perturb(64, level=0.5, distribution="gaussian", seed=1).make_noise(16, 16)
    assert noise.dtype == torch.float32
    assert abs(noise.std().item() - 0.5) < 0.01 and abs(noise.mean().item()) < 0.01
    h = hashlib.sha256(noise.numpy().tobytes()).hexdigest()
    assert h == hashlib.sha256(Perturb(64, level=0.5, distribution="gaussian", seed=1)
                               .make_noise(16, 16).numpy().tobytes()).hexdigest()
