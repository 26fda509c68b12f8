"""A tiny hard-sharing MTLModel and helpers shared by the method tests."""
from __future__ import annotations

import copy

import torch
from torch import nn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- a tiny MTLModel
class TinyMTL(nn.Module):
    """The hard-sharing MTLModel interface on an MLP: encoder Linear->ReLU->Linear, T linear heads."""

    def __init__(self, n_tasks: int = 3, d_in: int = 6, hidden: int = 16, d_z: int = 8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_z))
        self.heads = nn.ModuleList(nn.Linear(d_z, 1) for _ in range(n_tasks))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor, t: int) -> torch.Tensor:
        return self.heads[t](z).squeeze(-1)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def last_shared_layer(self) -> nn.Module:
        return self.encoder[2]

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return list(self.heads[t].parameters())


def make_batch(n_tasks: int = 3, batch: int = 32, d_in: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d_in, generator=g)
    y = torch.randn(batch, n_tasks, generator=g) * torch.arange(1, n_tasks + 1)  # unequal scales
    return x, y


def task_losses(model: TinyMTL, x: torch.Tensor, y: torch.Tensor):
    z = model.encode(x)
    losses = torch.stack([((model.decode(z, t) - y[:, t]) ** 2).mean() for t in range(y.shape[1])])
    return losses, z


def double_pair(n_tasks: int = 3, seed: int | None = 0) -> tuple[TinyMTL, TinyMTL, torch.Tensor, torch.Tensor]:
    """``(model, ref, x, y)``: a float64 TinyMTL (initialised after ``torch.manual_seed(seed)``
    unless ``seed`` is None), an independent deep copy of it for the reference computation, and
    ``make_batch(n_tasks)`` in float64."""
    if seed is not None:
        torch.manual_seed(seed)
    model = TinyMTL(n_tasks).double()
    ref = copy.deepcopy(model)
    x, y = make_batch(n_tasks)
    return model, ref, x.double(), y.double()


def reference_jacobian(model: TinyMTL, losses: torch.Tensor) -> torch.Tensor:
    """``J[t] = vec(d losses[t] / d theta_shared)``, shape ``(T, D)``: one plain
    ``torch.autograd.grad`` per task (graph retained), independent of the engine under test."""
    shared = model.shared_parameters()
    return torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
                        for t in range(losses.shape[0])])


def shared_grad(model: TinyMTL) -> torch.Tensor:
    """The shared parameters' ``.grad``, flattened and concatenated (the layout of ``reference_jacobian``)."""
    return torch.cat([p.grad.flatten() for p in model.shared_parameters()])


def grads_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def assert_grads_close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for ga, gb in zip(a, b):
        torch.testing.assert_close(ga, gb, atol=atol, rtol=1e-5)


def assert_task_by_task_equals_joint(w, w_ref, atol: float = 1e-13) -> torch.Tensor:
    """A separable weighting's contract on :func:`double_pair`: ``w_ref.backward`` (joint) on
    ``ref`` and, on ``model``, ``w.start_step()`` then ``w.task_objective(t, L_t).backward()`` per
    task give the same gradients. ``w`` and ``w_ref`` must start identical; returns ``model``'s losses."""
    T = w.n_tasks
    model, ref, x, y = double_pair(T)
    w_ref.backward(task_losses(ref, x, y)[0], ref)
    w.start_step()
    losses, _ = task_losses(model, x, y)
    for t in range(T):
        w.task_objective(t, losses[t]).backward(retain_graph=True)
    assert_grads_close(grads_of(model), grads_of(ref), atol=atol)
    return losses
