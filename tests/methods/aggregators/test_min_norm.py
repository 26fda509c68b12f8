"""The MGDA min-norm solver, torch and NumPy, against hand-solved cases and a brute-force grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlrepro.methods.aggregators.min_norm import min_norm_2, min_norm_solve, min_norm_solve_numpy

from ..toy import DEVICES


# --------------------------------------------------------------------------- min-norm solver
SOLVER_CASES = [(s, b) for s in ("fw", "pgd") for b in ("torch", "numpy")]


def solve(G, solver: str, backend: str, **kw):
    G = torch.as_tensor(G, dtype=torch.float64)
    if backend == "torch":
        a, c, it = min_norm_solve(G, solver=solver, **kw)
        return a.numpy(), float(c), int(it)
    return min_norm_solve_numpy(G, solver=solver, **kw)


def gram(*vectors):
    g = torch.tensor(vectors, dtype=torch.float64)
    return g @ g.T


@pytest.mark.parametrize("solver,backend", SOLVER_CASES)
def test_solver_two_orthogonal_unit_gradients(solver, backend):
    a, c, _ = solve(gram((1.0, 0.0), (0.0, 1.0)), solver, backend)
    np.testing.assert_allclose(a, [0.5, 0.5], atol=1e-12)
    assert c == pytest.approx(0.5)


@pytest.mark.parametrize("solver,backend", SOLVER_CASES)
def test_solver_collinear_gradients_all_weight_on_shorter(solver, backend):
    # g1 = (1,0), g2 = (2,0): the min-norm point of the segment is g1 itself
    a, c, _ = solve(gram((1.0, 0.0), (2.0, 0.0)), solver, backend)
    np.testing.assert_allclose(a, [1.0, 0.0], atol=1e-12)
    assert c == pytest.approx(1.0)


@pytest.mark.parametrize("solver,backend", SOLVER_CASES)
@pytest.mark.parametrize(
    "vectors,alpha,cost",
    [
        # orthonormal: centroid, |u|^2 = 1/3
        (((1, 0, 0), (0, 1, 0), (0, 0, 1)), (1 / 3, 1 / 3, 1 / 3), 1 / 3),
        # the origin is inside the triangle: barycentric coordinates of 0, |u|^2 = 0
        (((1, 0), (0, 1), (-1, -1)), (1 / 3, 1 / 3, 1 / 3), 0.0),
        # min-norm point (1, 0) on the edge g1 g2; g3 = (3, 0) gets no weight
        (((1, 1), (1, -1), (3, 0)), (0.5, 0.5, 0.0), 1.0),
        # a vertex: g1 = (1, 0) is the min-norm point of the hull
        (((1, 0), (2, 1), (3, -1)), (1.0, 0.0, 0.0), 1.0),
        # origin on the edge g1 g3 (opposite gradients 1:2): alpha = (2/3, 0, 1/3)
        (((1, 0), (0, 5), (-2, 0)), (2 / 3, 0.0, 1 / 3), 0.0),
    ],
)
def test_solver_three_gradients_known_solution(solver, backend, vectors, alpha, cost):
    vectors = [tuple(float(v) for v in vec) for vec in vectors]
    a, c, _ = solve(gram(*vectors), solver, backend)
    assert c == pytest.approx(cost, abs=1e-8)
    np.testing.assert_allclose(a, alpha, atol=1e-4)
    assert a.min() >= 0 and a.sum() == pytest.approx(1.0)


def simplex_grid(n: int) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(n + 1), torch.arange(n + 1), indexing="ij")
    keep = i + j <= n
    a1, a2 = i[keep].double() / n, j[keep].double() / n
    return torch.stack([a1, a2, 1 - a1 - a2], dim=1)


@pytest.mark.parametrize("solver,backend", SOLVER_CASES)
def test_solver_vs_brute_force_grid_three_tasks(solver, backend):
    grid = simplex_grid(400)  # 80k points, spacing 1/400
    gen = torch.Generator().manual_seed(123)
    for trial in range(20):
        dim = 2 if trial % 4 == 0 else 5  # rank-deficient Gram matrices too
        g = torch.randn(3, dim, generator=gen, dtype=torch.float64) + torch.rand(1, generator=gen) * 2
        G = g @ g.T
        brute = torch.einsum("ni,ij,nj->n", grid, G, grid).min().item()
        a, c, _ = solve(G, solver, backend)
        assert a.min() >= -1e-12 and a.sum() == pytest.approx(1.0)
        assert float(a @ G.numpy() @ a) == pytest.approx(c, abs=1e-10)
        # the solver may only be better than the grid (finer), and by no more than grid resolution
        assert c <= brute + 1e-4
        assert c >= brute - 1e-4


@pytest.mark.parametrize("solver", ["fw", "pgd"])
@pytest.mark.parametrize("T", [1, 2, 3, 8, 40])
def test_solver_torch_and_numpy_agree(solver, T):
    gen = torch.Generator().manual_seed(T)
    for _ in range(3):
        g = torch.randn(T, 64, generator=gen, dtype=torch.float64) + 1.5
        g = g / (g.norm(dim=1, keepdim=True) * torch.rand(T, 1, generator=gen, dtype=torch.float64).add(0.2))
        G = g @ g.T
        a_t, c_t, it_t = min_norm_solve(G, solver=solver)
        a_n, c_n, it_n = min_norm_solve_numpy(G, solver=solver)
        np.testing.assert_allclose(a_t.numpy(), a_n, atol=1e-8)
        assert float(c_t) == pytest.approx(c_n, rel=1e-8, abs=1e-12)
        assert int(it_t) == it_n
    if T >= 2:  # duplicated gradients (degenerate pairs) take the same branch in both
        g = torch.randn(T, 5, generator=gen, dtype=torch.float64)
        g[1] = g[0]
        a_t, _, _ = min_norm_solve(g @ g.T, solver=solver)
        a_n, _, _ = min_norm_solve_numpy(g @ g.T, solver=solver)
        np.testing.assert_allclose(a_t.numpy(), a_n, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_solver_torch_result_independent_of_check_every(device):
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(12, 30, generator=gen, dtype=torch.float64) + 1.0
    G = (g @ g.T).to(device)
    ref = min_norm_solve(G, check_every=1)
    for ce in (0, 5, 25):
        out = min_norm_solve(G, check_every=ce)
        torch.testing.assert_close(out[0], ref[0], atol=1e-12, rtol=0)
        assert int(out[2]) == int(ref[2])
    assert ref[0].device.type == torch.device(device).type


def test_solver_stops_early_and_respects_max_iter():
    G = gram((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    _, _, it = min_norm_solve_numpy(G)
    assert it == 1  # one Frank-Wolfe step from the best pair reaches the centroid
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(40, 10, generator=gen, dtype=torch.float64) + 0.3
    _, _, it = min_norm_solve_numpy(g @ g.T, max_iter=7)
    assert it <= 7


def test_min_norm_2_cases():
    one = torch.tensor(1.0, dtype=torch.float64)
    # orthogonal unit vectors
    gam, cost = min_norm_2(one, 0 * one, one)
    assert float(gam) == pytest.approx(0.5) and float(cost) == pytest.approx(0.5)
    # x1 . x2 >= |x1|^2: x1 is the solution (gamma = 1, exact, not the reference's 0.999)
    gam, cost = min_norm_2(one, 2 * one, 4 * one)
    assert float(gam) == 1.0 and float(cost) == pytest.approx(1.0)
    # x1 . x2 >= |x2|^2: x2 is the solution
    gam, cost = min_norm_2(4 * one, 2 * one, one)
    assert float(gam) == 0.0 and float(cost) == pytest.approx(1.0)
    # identical vectors: no NaN
    gam, cost = min_norm_2(one, one, one)
    assert torch.isfinite(gam) and float(cost) == pytest.approx(1.0)
