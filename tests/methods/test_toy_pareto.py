r"""Every gradient aggregator on a two-task toy with a known Pareto front.

:math:`L_1(x) = \lVert x-a\rVert^2`, :math:`L_2(x) = k\lVert x-b\rVert^2` on :math:`x\in\mathbb R^2`,
``a = (1, 0)``, ``b = (-1, 0)``, ``k = 4`` (unequal scales). The Pareto set is the segment
:math:`[a, b]` and the front :math:`\sqrt{L_1} + \sqrt{L_2/k} = \lVert a-b\rVert = 2`. The start
``(0.4, 1.5)`` has aligned gradients; they conflict inside the circle on :math:`[a, b]`, and are
exactly opposed on the segment. Plain gradient descent ``x <- x - lr * d`` with each method's
``aggregate``; each test checks the trajectory property its paper states, and the end point.
"""
from __future__ import annotations

import math

import pytest
import torch

from mtlrepro.methods import build_weighting

D = torch.float64
A = torch.tensor([1.0, 0.0], dtype=D)
B = torch.tensor([-1.0, 0.0], dtype=D)
K = 4.0
X0 = torch.tensor([0.4, 1.5], dtype=D)
LR, STEPS = 0.01, 300


def losses_and_jacobian(x: torch.Tensor, k: float = K) -> tuple[torch.Tensor, torch.Tensor]:
    L = torch.stack([((x - A) ** 2).sum(), k * ((x - B) ** 2).sum()])
    J = torch.stack([2 * (x - A), 2 * k * (x - B)])
    return L, J


def distance_to_pareto_set(x: torch.Tensor) -> float:
    t = ((x - B) @ (A - B) / ((A - B) @ (A - B))).clamp(0, 1)
    return float((x - (B + t * (A - B))).norm())


def on_front(L: torch.Tensor, k: float = K) -> float:
    return float(L[0].sqrt() + (L[1] / k).sqrt()) - 2.0


def run(name: str, steps: int = STEPS, k: float = K, **kw):
    """The trajectory: a list of (x, L, J, d, coefficients, logs) per step, and the end point."""
    agg = build_weighting(name, 2, **kw).double()
    x, out = X0.clone(), []
    for _ in range(steps):
        L, J = losses_and_jacobian(x, k)
        c, logs = agg.coefficients(J, L)
        d = c @ J
        out.append((x, L, J, d, c, logs))
        x = x - LR * d
    return out, x


def assert_reaches_front(x: torch.Tensor, tol: float = 1e-2) -> None:
    L, _ = losses_and_jacobian(x)
    assert distance_to_pareto_set(x) < tol
    assert abs(on_front(L)) < tol


def test_mgda_direction_improves_every_task_and_stops_on_the_front():
    traj, x = run("mgda")
    for _, L, J, d, _, _ in traj:
        # Sener & Koltun's Theorem: the min-norm point d has g_t . d >= |d|^2 >= 0 for every task
        assert (J @ d).min() >= (d @ d) * (1 - 1e-4) - 1e-12
    losses = torch.stack([t[1] for t in traj])
    assert (losses[1:] <= losses[:-1] + 1e-12).all()  # no task ever gets worse
    assert_reaches_front(x)
    assert float(traj[-1][3].norm()) < 0.1 * float(traj[0][3].norm())  # the update vanishes there


def test_pcgrad_removes_the_conflicting_component_only():
    traj, x = run("pcgrad", seed=0)
    n_conflicts = 0
    for _, _, J, d, c, _ in traj:
        g1, g2 = J
        ip = float(g1 @ g2)
        if ip >= 0:  # no conflict: the plain sum
            torch.testing.assert_close(c, torch.ones(2, dtype=D))
            continue
        n_conflicts += 1
        # g1' = g1 - (g1.g2/|g2|^2) g2 is orthogonal to g2 (and symmetrically), both are kept
        torch.testing.assert_close(c, torch.stack([1 - ip / (g1 @ g1), 1 - ip / (g2 @ g2)]), atol=1e-12, rtol=0)
        assert float((J @ d).min()) >= -1e-9  # two tasks: neither gets worse to first order
    assert n_conflicts > 50 and n_conflicts < STEPS  # both regimes are visited
    assert_reaches_front(x, tol=1e-6)  # on the segment the projections cancel exactly


def test_cagrad_stays_in_the_ball_beats_the_mean_and_converges_to_the_average_loss_minimum():
    c_ball = 0.5
    traj, x = run("cagrad", c=c_ball)
    rho = 1 + c_ball ** 2  # rescale=1
    for _, _, J, d, _, _ in traj:
        g0 = J.mean(0)
        assert float((rho * d - g0).norm()) <= c_ball * float(g0.norm()) * (1 + 1e-8)
        assert float((J @ (rho * d)).min()) >= float((J @ g0).min()) - 1e-9
    # Liu et al.'s Theorem 3.2: with c < 1 CAGrad converges to a minimum of L0 = mean_t L_t
    torch.testing.assert_close(x, (A + K * B) / (1 + K), atol=1e-2, rtol=0)
    assert_reaches_front(x)


def test_gradvac_starts_as_pcgrad_then_follows_its_ema_target():
    traj, x = run("gradvac", seed=0)
    _, _, J, _, c, _ = traj[0]
    g1, g2 = J
    ip = float(g1 @ g2)
    expected = torch.ones(2, dtype=D) if ip >= 0 else torch.stack([1 - ip / (g1 @ g1), 1 - ip / (g2 @ g2)])
    torch.testing.assert_close(c, expected, atol=1e-7, rtol=0)  # phi_hat = 0: PCGrad's projection
    # near the front the gradients are opposed (cos -> -1) step after step, the EMA target follows
    # (phi_hat -> -1), nothing falls below it, so GradVac follows the summed gradient to argmin sum L
    assert float(traj[-1][5]["phi_hat_mean"]) < -0.99
    torch.testing.assert_close(x, (A + K * B) / (1 + K), atol=1e-2, rtol=0)
    assert_reaches_front(x)


def test_nash_mtl_bargaining_improves_every_task_and_is_scale_invariant():
    traj, x = run("nash_mtl")
    checked = 0
    for _, _, J, d, c, logs in traj:
        alpha = logs["alpha"]
        assert float((J @ d).min()) > 0  # every task improves, at every step
        if float(J[0] @ J[1] / (J[0].norm() * J[1].norm())) > -0.99:  # G not near-singular (no ridge effect)
            # Navon et al.'s Eq. 4: alpha_t g_t . d_alpha = 1
            torch.testing.assert_close(alpha * (J @ (alpha @ J)), torch.ones(2, dtype=D), atol=1e-4, rtol=0)
            checked += 1
    assert checked > 50
    assert_reaches_front(x, tol=2 * LR)  # |d| = 1 (max_norm): it stops within a step of the front
    # the same run with L2 scaled by 10 follows the same path (the paper's scale invariance;
    # without the ridge, which is relative to the mean squared gradient norm), up to where the
    # gradients become nearly opposed and G nearly singular
    plain, _ = run("nash_mtl", steps=150, ridge=0.0)
    scaled, _ = run("nash_mtl", steps=150, k=10 * K, ridge=0.0)
    prefix = [(a[0], b[0]) for a, b in zip(plain, scaled)
              if float(a[2][0] @ a[2][1] / (a[2][0].norm() * a[2][1].norm())) > -0.99]
    assert len(prefix) > 50
    for xa, xb in prefix:
        torch.testing.assert_close(xb, xa, atol=1e-9, rtol=0)


def test_imtl_g_projects_the_update_equally_on_every_task():
    traj, x = run("imtl", loss_scale=False)
    for _, _, J, d, c, _ in traj:
        proj = J @ d / J.norm(dim=1)  # d . u_t
        assert float(abs(proj[0] - proj[1])) <= 1e-9 * float(J.norm())
        assert float(c.sum()) == pytest.approx(1.0)
    assert_reaches_front(x)


@pytest.mark.parametrize("preference", [1, 2, 3])
def test_pareto_mtl_ends_on_the_front_inside_its_preference_cone(preference):
    traj, x = run("pareto_mtl", preference=preference, steps=400)
    agg = build_weighting("pareto_mtl", 2)
    prefs = torch.from_numpy(agg.preferences)
    L, _ = losses_and_jacobian(x)
    Lbar = L / L.norm()
    # Lin et al.'s subproblem k: (u_j - u_k) . L / |L| <= 0 for every j (up to a step's overshoot)
    assert float(((prefs - prefs[preference]) @ Lbar).max()) <= 1e-3
    angle = math.degrees(math.atan2(float(L[1]), float(L[0])))
    assert 22.5 * preference - 11.25 - 0.5 <= angle <= 22.5 * preference + 11.25 + 0.5
    assert_reaches_front(x)
    phase = [float(t[5]["initial_phase"]) for t in traj]
    n_init = int(sum(phase))  # the initial (feasibility) phase comes first, ends once, for good
    assert 0 < n_init < 100 and phase == [1.0] * n_init + [0.0] * (len(traj) - n_init)
