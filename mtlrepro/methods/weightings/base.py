r"""Loss weightings: methods that backpropagate a combination of the task losses.

A :class:`LossWeighting` builds the objective from the loss vector and calls one ``.backward()``:

.. math::  \text{model} \leftarrow \nabla_\theta\, F(L_1, \dots, L_T),
           \qquad \texttt{task\_weights}_t = \partial F / \partial L_t .

**Separable** weightings (``separable = True``) have :math:`F = \sum_t f_t(L_t)` with every
:math:`f_t` fixed before the batch's forward passes (equal, fixed scalarisation, DWA's per-epoch
weights, RLW's per-step sampled weights, uncertainty weighting's :math:`e^{-s_t} L_t + s_t`). They
implement three methods, so that the one-task-per-forward update schemes can apply them task by
task, and the joint :meth:`LossWeighting.backward` is derived from them:

* :meth:`~LossWeighting.start_step` -- once per batch, before any task's forward (RLW samples);
* :meth:`~LossWeighting.task_objective` -- :math:`f_t(L_t)`, attached to the graph;
* :meth:`~LossWeighting.current_task_weights` -- :math:`f_t'(L_t)`, ``(T,)``, for the logs.

:class:`WeightedSumWeighting` is the common case :math:`F = \sum_t w_t L_t` with the step's weights
in a ``(T,)`` buffer (fixed scalarisation, RLW, ...): it implements the three from that buffer.

Non-separable loss weightings (GradNorm: its weight update needs every task's gradient norm at
the same shared weights) override :meth:`~LossWeighting.backward` and keep ``separable = False``.
"""
from __future__ import annotations

import torch
from torch import nn

from mtlrepro.methods.base import Weighting

__all__ = ["LossWeighting", "WeightedSumWeighting"]


class LossWeighting(Weighting):
    """Base of the loss weightings (see the module docstring for the separable contract)."""

    def start_step(self) -> None:
        """Called once per batch before the task losses are computed. No-op by default."""

    def task_objective(self, t: int, loss: torch.Tensor) -> torch.Tensor:
        """:math:`f_t(L_t)` for one task's scalar loss (separable weightings only)."""
        raise NotImplementedError(f"weighting {self.name!r} is not separable: {self.not_separable_because}")

    def current_task_weights(self, like: torch.Tensor) -> torch.Tensor:
        """:math:`\\partial F/\\partial L_t` of this step, ``(T,)``, detached, ``like``'s dtype/device."""
        raise NotImplementedError(f"weighting {self.name!r} is not separable: {self.not_separable_because}")

    def objective(self, losses: torch.Tensor) -> torch.Tensor:
        """:math:`F(L) = \\sum_t f_t(L_t)` (separable weightings may override it with an equal,
        cheaper expression)."""
        return torch.stack([self.task_objective(t, losses[t]) for t in range(self.n_tasks)]).sum()

    def backward(
        self, losses: torch.Tensor, model: nn.Module | None = None, z: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Joint application: ``objective(losses).backward()`` (``model`` and ``z`` unused)."""
        self._check_losses(losses)
        self.start_step()
        total = self.objective(losses)
        total.backward()
        return {"task_weights": self.current_task_weights(losses), "total_loss": total.detach()}


class WeightedSumWeighting(LossWeighting):
    r"""A separable :math:`F = \sum_t w_t L_t` whose step weights :math:`w` are the ``(T,)`` buffer
    ``self.weights`` (the subclass registers it and sets it: once, per epoch or per step):
    :math:`f_t(L_t) = w_t L_t`, ``task_weights`` = :math:`w`, cast to the losses' dtype and device."""

    weights: torch.Tensor

    def task_objective(self, t: int, loss: torch.Tensor) -> torch.Tensor:
        return self.weights[t].to(loss.dtype) * loss

    def objective(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.weights.to(losses.dtype) * losses).sum()

    def current_task_weights(self, like: torch.Tensor) -> torch.Tensor:
        return self.weights.detach().to(dtype=like.dtype, device=like.device).clone()
