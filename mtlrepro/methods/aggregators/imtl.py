r"""IMTL (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021): IMTL-G, optionally with
IMTL-L (the hybrid the paper calls IMTL, and LibMTL's ``IMTL``).

**IMTL-G** (the paper's Sec. 3.2): find the update :math:`d = \sum_t\alpha_t g_t`,
:math:`\sum_t\alpha_t = 1`, whose projections on every task's unit gradient are equal,
:math:`d\cdot u_t = d\cdot u_1` with :math:`u_t = g_t/\lVert g_t\rVert`. In Gram form
(:math:`G = JJ^\top`, :math:`n_t = \lVert g_t\rVert = \sqrt{G_{tt}}`) the condition reads
:math:`G\alpha = \lambda\, n`, so

.. math::  \alpha = \frac{G^{+} n}{\mathbf 1^\top G^{+} n},

the paper's closed form :math:`\alpha_{2:T} = g_1 U^\top (D U^\top)^{-1}`,
:math:`\alpha_1 = 1 - \sum_{t\ge2}\alpha_t` (rows :math:`D_t = g_1 - g_t`, :math:`U_t = u_1 - u_t`)
when ``G`` is invertible, and torchjd's ``IMTLG`` generalisation (pseudo-inverse) otherwise. The
:math:`\alpha_t` may be negative.

**IMTL-L** (Sec. 3.1, ``loss_scale=True``): each loss is replaced by
:math:`e^{s_t}L_t - s_t` with a learned :math:`s_t` (initially 0, stepped by the model's optimizer
with gradient :math:`e^{s_t}L_t - 1`); IMTL-G then works on the gradients of the scaled losses.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from mtlrepro.methods.aggregators.base import Aggregator
from mtlrepro.methods.aggregators.pcgrad import host_gram

__all__ = ["IMTL", "imtl_g_weights"]


def imtl_g_weights(G: torch.Tensor) -> torch.Tensor:
    """IMTL-G's :math:`\\alpha` from the Gram matrix (float64); zeros when :math:`1^\\top G^+ n = 0`
    (e.g. all gradients zero), as torchjd."""
    G = (G + G.T) / 2
    n = G.diagonal().clamp_min(0).sqrt()
    v = torch.linalg.pinv(G, hermitian=True) @ n
    total = v.sum()
    return torch.zeros_like(v) if float(total.abs()) < 1e-12 else v / total


class IMTL(Aggregator):
    r"""IMTL on the Jacobian w.r.t. the shared parameters (see the module docstring).

    Hyper-parameters (values and where they come from):

    * ``loss_scale = True`` -- the paper's IMTL is the hybrid IMTL-L + IMTL-G, and LibMTL's
      ``IMTL`` implements the hybrid; ``False`` is IMTL-G alone (torchjd's ``IMTLG``).
      Initial :math:`s_t = 0` (LibMTL). No table of the three papers lists IMTL; it is here for
      completeness of the aggregator set.
    * task-specific parameters receive their own task's gradient of the (scaled) loss
      (``task_gradient_scale="own"``, LibMTL).

    ``task_weights`` are the coefficients of the raw task gradients in the shared update,
    :math:`\alpha_t e^{s_t}`; logs ``alpha`` and (with ``loss_scale``) ``loss_scale`` :math:`s`.

    Checked against ``torchjd.aggregation.IMTLG``, the paper's closed form and the defining
    property (equal projections) in ``tests/methods/aggregators/test_imtl.py``.

    Example::

        >>> import torch
        >>> J = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> IMTL(2, loss_scale=False).aggregate(J)   # d.u_1 = d.u_2: alpha = (1/3, 2/3)
        tensor([0.6667, 0.6667], dtype=torch.float64)
    """

    name: ClassVar[str] = "imtl"
    task_gradient_scale: ClassVar[str] = "own"

    def __init__(self, n_tasks: int, loss_scale: bool = True, batched: bool = True, **kwargs: Any):
        super().__init__(n_tasks, batched=batched, **kwargs)
        self.loss_scale = bool(loss_scale)
        self.log_scales = nn.Parameter(torch.zeros(self.n_tasks)) if self.loss_scale else None

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.log_scales] if self.log_scales is not None else []

    def parameters_for_model_optimizer(self) -> list[nn.Parameter]:
        return self.extra_parameters()

    def coefficients(self, J: torch.Tensor, losses: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        alpha = imtl_g_weights(host_gram(J)).to(J.device)
        return alpha, {"alpha": alpha}

    def backward(self, losses: torch.Tensor, model: nn.Module | None = None, z: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
        if self.log_scales is None:
            return super().backward(losses, model, z)
        self._check_losses(losses)
        s = self.log_scales.to(losses.dtype)
        scaled = s.detach().exp() * losses - s.detach()
        logs = super().backward(scaled, model, z)  # IMTL-G on the scaled losses' gradients
        grad_s = (s.detach().exp() * losses.detach() - 1.0).to(self.log_scales.dtype)
        if self.log_scales.grad is None:
            self.log_scales.grad = grad_s.clone()
        else:
            self.log_scales.grad.add_(grad_s)
        logs["task_weights"] = logs["alpha"] * s.detach().exp()
        logs["loss_scale"] = s.detach().clone()
        return logs

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, loss_scale={self.loss_scale}"
